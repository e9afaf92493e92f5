"""The README's first screen and snippets stay true (tessera's README_test.go)."""

from __future__ import annotations

import re
from pathlib import Path

from corral.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_first_screen_gives_the_two_commands_and_make_has_them() -> None:
    first_screen = "\n".join(README.splitlines()[:15])
    assert "make demo" in first_screen and "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_toml_example_is_valid_settings(tmp_path: Path) -> None:
    (block,) = re.findall(r"```toml\n(.*?)```", README, re.S)
    config = tmp_path / "corral.toml"
    config.write_text(block)
    settings = load_settings(config)
    assert settings.deployment == "brightsmile.example"
    assert settings.audit.anchor.backend == "dynamodb"
    assert settings.audit_database_url().startswith("postgresql+psycopg://")


def test_every_cli_command_in_the_readme_exists() -> None:
    from typer.testing import CliRunner

    from corral.cli import app

    commands = re.findall(r"^corral audit ([a-z]+(?: [a-z]+)?)", README, re.M)
    assert len(commands) >= 8
    for command in commands:
        words = command.split()
        if words[0] != "anchor":
            words = words[:1]
        result = CliRunner().invoke(app, ["audit", *words, "--help"])
        assert result.exit_code == 0, f"corral audit {' '.join(words)}: {result.output}"


def test_every_broker_and_fakes_command_in_the_readme_exists() -> None:
    from typer.testing import CliRunner

    from corral.cli import app

    commands = re.findall(r"^corral (broker|fakes|supervisor|control) ([a-z-]+)", README, re.M)
    assert len(commands) >= 7
    for group, command in commands:
        result = CliRunner().invoke(app, [group, command, "--help"])
        assert result.exit_code == 0, f"corral {group} {command}: {result.output}"
