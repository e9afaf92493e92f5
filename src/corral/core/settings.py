"""corral's settings: one tree, loaded once at an entry point and passed down.

Sources, strongest first: keyword arguments, ``CORRAL_*`` environment variables (``__`` nests:
``CORRAL_AUDIT__ANCHOR__BACKEND=dynamodb``), a TOML file, then the defaults. Libraries never
read the environment; they receive the part of this tree they need.

Secrets are never defaulted: the audit signing keys are generated on first start inside the
data directory (mode 0600), see :mod:`corral.audit.keys`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from corral.core.errors import ConfigError

__all__ = ["AnchorSettings", "AuditSettings", "Settings", "load_settings"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnchorSettings(_Section):
    backend: Literal["local", "dynamodb"] = "local"
    interval_s: float = Field(60.0, gt=0, description="seconds between automatic anchors")
    dynamodb_table: str = "corral-anchors"
    region: str = "us-west-2"
    endpoint_url: str | None = Field(None, description="e.g. a dynalite or LocalStack URL")
    rfc3161_url: str | None = Field(None, description="optional RFC 3161 timestamp authority")


class AuditSettings(_Section):
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file audit.db in the data directory"
    )
    checkpoint_interval_s: float = Field(1.0, gt=0, description="a signed checkpoint follows")
    max_batch: int = Field(1024, ge=1, le=65536, description="appends per group commit")
    max_pending: int = Field(100_000, ge=1, description="queued appends before Pushback")
    anchor: AnchorSettings = AnchorSettings()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Path(".corral")
    deployment: str = Field("corral.local", description="origin prefix: <deployment>/tenants/<id>")
    audit: AuditSettings = AuditSettings()

    @field_validator("deployment")
    @classmethod
    def _deployment_is_origin_safe(cls, value: str) -> str:
        if not value or any(c.isspace() or c == "+" for c in value) or not value.isprintable():
            raise ValueError("deployment must be printable, without spaces or '+'")
        return value

    def audit_database_url(self) -> str:
        return self.audit.database_url or f"sqlite:///{self.data_dir / 'audit.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = init_settings.init_kwargs.pop("_toml_file", None)  # type: ignore[attr-defined]
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings tree from overrides, the environment and an optional TOML file."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file not found: {config_file}")
    try:
        return Settings(_toml_file=config_file, **overrides)  # type: ignore[call-arg]
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
