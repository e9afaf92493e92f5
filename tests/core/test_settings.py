"""Settings: defaults, environment over file, refusal of bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.core.errors import ConfigError
from corral.core.settings import load_settings


@pytest.fixture(autouse=True)
def _no_corral_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.data_dir == Path(".corral")
    assert settings.audit.anchor.backend == "local"
    assert settings.audit.anchor.region == "us-west-2"
    assert settings.audit.anchor.interval_s == 60
    assert settings.audit_database_url() == "sqlite:///.corral/audit.db"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "corral.toml"
    config.write_text('deployment = "from-file"\n[audit]\ncheckpoint_interval_s = 5\n')
    monkeypatch.setenv("CORRAL_AUDIT__CHECKPOINT_INTERVAL_S", "2.5")
    settings = load_settings(config)
    assert settings.deployment == "from-file"
    assert settings.audit.checkpoint_interval_s == 2.5


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('deployment = "has space"\n', "deployment"),
        ("[audit]\nmax_batch = 0\n", "max_batch"),
        ('[audit.anchor]\nbackend = "s3"\n', "backend"),
        ("surprise = 1\n", "surprise"),
    ],
)
def test_bad_values_are_refused_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    config = tmp_path / "corral.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=field):
        load_settings(config)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
