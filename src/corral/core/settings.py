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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from corral.core.errors import ConfigError

__all__ = [
    "AnchorSettings",
    "AuditSettings",
    "BrokerSettings",
    "ControlSettings",
    "Settings",
    "load_settings",
]


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


class BrokerSettings(_Section):
    """The capability broker: its own database, key material and socket (``docs/broker.md``)."""

    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file broker/broker.db in the data dir"
    )
    database_schema: str | None = Field(None, description="PostgreSQL schema for its tables")
    key_provider: Literal["local", "aws-kms"] = "local"
    kms_key_id: str | None = Field(None, description="the shared KMS key (aws-kms only)")
    region: str = "us-west-2"
    kms_endpoint_url: str | None = Field(None, description="e.g. a LocalStack or moto URL")
    socket: Path | None = Field(None, description="Unix socket; default broker/broker.sock")
    tcp_host: str | None = Field(None, description="also listen on TCP (TLS required)")
    tcp_port: int = Field(8443, ge=1, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    approval_vkeys: tuple[str, ...] = Field(
        (), description="control-plane approval keys; default: control/approval.pub in data dir"
    )
    approval_max_ttl_s: float = Field(60.0, gt=0, le=300, description="longest approval accepted")
    provider_timeout_s: float = Field(15.0, gt=0, description="per provider HTTP request")
    provider_max_in_flight: int = Field(
        16, ge=1, le=1024, description="requests in flight per provider host; more wait"
    )
    refresh_lease_s: float = Field(30.0, gt=0, description="one refresh per connection at a time")

    @model_validator(mode="after")
    def _kms_needs_key(self) -> BrokerSettings:
        if self.key_provider == "aws-kms" and not self.kms_key_id:
            raise ValueError("broker.kms_key_id is required when broker.key_provider is aws-kms")
        if self.tcp_host is not None and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("broker.tcp_host needs broker.tls_cert and broker.tls_key")
        return self


class ControlSettings(_Section):
    """``corral control``: the supervisor's ledger, its socket, tenants' policies."""

    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file control/control.db in the data dir"
    )
    database_schema: str | None = Field(None, description="PostgreSQL schema for its tables")
    socket: Path | None = Field(None, description="Unix socket; default control/control.sock")
    tcp_host: str | None = Field(None, description="also listen on TCP (TLS required)")
    tcp_port: int = Field(8444, ge=1, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    defer_timeout_s: float = Field(300.0, gt=0, description="a call deferred longer escalates")
    reconsider_every_s: float = Field(1.0, gt=0, description="how often held calls are retried")

    @model_validator(mode="after")
    def _tcp_needs_tls(self) -> ControlSettings:
        if self.tcp_host is not None and (self.tls_cert is None or self.tls_key is None):
            raise ValueError("control.tcp_host needs control.tls_cert and control.tls_key")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Path(".corral")
    deployment: str = Field("corral.local", description="origin prefix: <deployment>/tenants/<id>")
    audit: AuditSettings = AuditSettings()
    broker: BrokerSettings = BrokerSettings()
    control: ControlSettings = ControlSettings()

    @field_validator("deployment")
    @classmethod
    def _deployment_is_origin_safe(cls, value: str) -> str:
        if not value or any(c.isspace() or c == "+" for c in value) or not value.isprintable():
            raise ValueError("deployment must be printable, without spaces or '+'")
        return value

    def audit_database_url(self) -> str:
        return self.audit.database_url or f"sqlite:///{self.data_dir / 'audit.db'}"

    @property
    def broker_dir(self) -> Path:
        """The broker's own directory: its database, key file and socket by default."""
        return self.data_dir / "broker"

    def broker_database_url(self) -> str:
        return self.broker.database_url or f"sqlite:///{self.broker_dir / 'broker.db'}"

    def broker_socket(self) -> Path:
        return self.broker.socket or self.broker_dir / "broker.sock"

    @property
    def control_dir(self) -> Path:
        """Control's own directory: its ledger, socket, approval key; ``tenants/`` policies."""
        return self.data_dir / "control"

    def control_database_url(self) -> str:
        return self.control.database_url or f"sqlite:///{self.control_dir / 'control.db'}"

    def control_socket(self) -> Path:
        return self.control.socket or self.control_dir / "control.sock"

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
