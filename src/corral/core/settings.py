"""corral's settings: one tree, loaded once at an entry point and passed down.

Sources, strongest first: keyword arguments, ``CORRAL_*`` environment variables (``__`` nests:
``CORRAL_AUDIT__ANCHOR__BACKEND=dynamodb``), a TOML file, then the defaults. Libraries never
read the environment; they receive the part of this tree they need.

Secrets are never defaulted: the audit signing keys are generated on first start inside the
data directory (mode 0600), see :mod:`corral.audit.keys`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
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
    "ControlClockSettings",
    "ControlSettings",
    "DashboardSettings",
    "HostFirecrackerSettings",
    "HostLimitsSettings",
    "HostSettings",
    "Settings",
    "TemplatesSettings",
    "UpSettings",
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


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback IP literal (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` split; ``ValueError`` naming what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"dashboard.listen must be host:port, e.g. 127.0.0.1:8765, not {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"dashboard.listen: port {number} is not in 1..65535")
    return host, number


class DashboardSettings(_Section):
    """The operator dashboard (``docs/dashboard.md``), served by ``corral control``.

    It is mounted at ``/dashboard`` of control's app (so also on control's TLS listener, if
    any) and, for a browser on this machine, served alone over plain HTTP on ``listen``.
    ``listen`` must be loopback: browsers treat ``http://127.0.0.1`` and ``http://localhost`` as
    secure contexts (WebCrypto, which the in-browser audit check needs), and nothing else
    may see session cookies and passwords in the clear.

    ``tenant_names`` and ``timezones`` override how a tenant is called and which zone its
    times are shown in; by default the tenant id and the tenant policy's ``timezone``.
    ``secure_cookies``: ``auto`` marks the session cookie ``Secure`` when the request came over
    TLS (behind a proxy, run uvicorn with proxy headers so the scheme is right).
    """

    enabled: bool = Field(True, description="mount and serve the dashboard in corral control")
    listen: str = Field(
        "127.0.0.1:8765", description="loopback host:port where the browser reaches it (HTTP)"
    )
    database_url: str | None = Field(
        None, description="owners and sessions; default: SQLite control/dashboard.db in data dir"
    )
    session_hours: float = Field(8.0, gt=0, le=24 * 30, description="absolute session expiry")
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    login_attempts: int = Field(5, ge=1, description="failed sign-ins per window and address")
    login_window_s: float = Field(900.0, gt=0)
    per_page: int = Field(25, ge=1, le=500, description="timeline lines per page")
    tenant_names: Mapping[str, str] = Field(
        default_factory=dict, description="tenant → display name; default: the tenant id"
    )
    timezones: Mapping[str, str] = Field(
        default_factory=dict, description="tenant → IANA zone; default: the policy's timezone"
    )
    template_catalog: Path | None = Field(
        None, description="template catalog directory; default: templates/ of the source tree"
    )
    templates_database_url: str | None = Field(
        None, description="template activations; default: SQLite control/templates.db"
    )

    @model_validator(mode="after")
    def _listen_is_loopback(self) -> DashboardSettings:
        host, _port = _host_port(self.listen)
        if self.enabled and not _loopback(host):
            raise ValueError(
                f"dashboard.listen {self.listen!r} is not a loopback address: the dashboard's "
                "own port serves plain HTTP, so it must be 127.0.0.1, ::1 or localhost. To reach "
                "the dashboard from another machine, use control.tcp_host with control.tls_cert "
                "and control.tls_key (it is at /dashboard there) or a TLS proxy in front"
            )
        return self

    def address(self) -> tuple[str, int]:
        """``listen`` as (IP literal, port); ``localhost`` is bound as 127.0.0.1."""
        host, port = _host_port(self.listen)
        return ("127.0.0.1" if host == "localhost" else host), port


class HostLimitsSettings(_Section):
    """Default bounds of one sandbox (an agent may ask for its own)."""

    memory_mib: int = Field(256, gt=0)
    pids: int = Field(64, gt=0)
    cpu_seconds: int = Field(300, gt=0, description="CPU time before the sandbox is killed")
    cpu_quota: float = Field(1.0, gt=0, le=64, description="share of one core")
    open_files: int = Field(256, gt=0)
    tmp_mib: int = Field(64, gt=0, description="size of the sandbox's private /tmp")


class HostFirecrackerSettings(_Section):
    """Where Firecracker and its guest images are (``images/firecracker/build-guest.sh``)."""

    firecracker: Path = Path("/usr/local/bin/firecracker")
    jailer: Path | None = Field(
        Path("/usr/local/bin/jailer"), description="None: development mode, never for tenants"
    )
    kernel: Path | None = Field(None, description="default: host/firecracker/vmlinux")
    rootfs: Path | None = Field(None, description="default: host/firecracker/rootfs.ext4")
    uid: int = Field(65534, ge=0, description="the jailer drops to this user")
    gid: int = Field(65534, ge=0)
    chroot_base: Path = Path("/srv/jailer")
    snapshot_dir: Path | None = None


class HostSettings(_Section):
    """``corral host``: the sandboxes it runs, how it reaches control, its admin socket."""

    socket: Path | None = Field(None, description="admin Unix socket; default host/host.sock")
    control_socket: Path | None = Field(
        None, description="control's Unix socket; default: control's own (control.socket)"
    )
    control_url: str | None = Field(
        None, description="reach control over TCP with TLS instead, e.g. https://ctl:8444"
    )
    control_ca: Path | None = Field(None, description="CA bundle for control_url's certificate")
    backend: Literal["auto", "firecracker", "gvisor", "bwrap"] = Field(
        "auto", description="sandbox backend; auto: the strongest this machine can run"
    )
    warm_pool: int = Field(1, ge=0, le=64, description="ready sandboxes kept per tenant")
    min_isolation: dict[str, Literal["namespaces", "gvisor", "vm"]] = Field(
        default_factory=dict, description="tenant → the weakest isolation its sandboxes may have"
    )
    ready_timeout_s: float = Field(10.0, gt=0, description="start → sandbox.ready, at most")
    restart_initial_s: float = Field(0.5, gt=0, description="first delay before a restart")
    restart_max_s: float = Field(30.0, gt=0, description="longest delay between restarts")
    restart_reset_after_s: float = Field(
        60.0, gt=0, description="a sandbox healthy this long resets the back-off"
    )
    restart_max_crashes: int = Field(5, ge=1, description="crashes in the window before giving up")
    restart_window_s: float = Field(300.0, gt=0, description="the window those crashes count in")
    limits: HostLimitsSettings = HostLimitsSettings()
    firecracker: HostFirecrackerSettings = HostFirecrackerSettings()

    @model_validator(mode="after")
    def _bounds(self) -> HostSettings:
        if self.restart_initial_s > self.restart_max_s:
            raise ValueError("host.restart_initial_s must not exceed host.restart_max_s")
        if self.control_url is not None and not self.control_url.startswith("https://"):
            raise ValueError("host.control_url must be https:// (TCP to control needs TLS)")
        return self


class TemplatesSettings(_Section):
    """Template maintenance in ``corral control`` (``docs/templates.md``): every
    ``maintain_every_s`` seconds (the first round at start), at the time control decides on,
    the automatic upgrades (security patches) are applied and notice is recorded in the audit
    chain, once per activation and date, of each pinned version that sunsets within
    ``warn_days`` or has sunset. The catalog and the activations are the dashboard's
    (``dashboard.template_catalog``, ``dashboard.templates_database_url``).
    """

    maintain_every_s: float = Field(
        3600.0, gt=0, description="seconds between maintenance rounds (upgrades and notices)"
    )
    warn_days: int = Field(14, ge=0, le=366, description="notice is given this close to a sunset")


class ControlClockSettings(_Section):
    """Simulated time for control's decisions (``corral demo`` only, see ``docs/demo.md``).

    Read by ``python -m corral.demo.control``, never by ``corral control serve``: the clock of
    every decision (quiet hours, daily windows) runs ``factor`` times faster than real time
    from ``start``, standing still until the demo begins the day. The dispatcher and the broker
    keep real time: approvals and delegations expire in real seconds.
    """

    start: AwareDatetime = Field(description="simulated time before the day begins")
    factor: float = Field(1.0, gt=0, le=1_000_000, description="simulated seconds per second")


class UpSettings(_Section):
    """``corral up``: broker, control and host as child processes of one command."""

    aws: bool = Field(
        False, description="AWS defaults: KMS key provider (broker.kms_key_id), DynamoDB anchors"
    )
    start_timeout_s: float = Field(
        120.0, gt=0, description="longest wait for one child's health endpoint"
    )
    stop_grace_s: float = Field(
        30.0, gt=0, description="SIGTERM → SIGKILL, per child (the host stops its sandboxes)"
    )
    control_clock: ControlClockSettings | None = Field(
        None, description="demo only: control decides on an accelerated clock"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Path(".corral")
    deployment: str = Field("corral.local", description="origin prefix: <deployment>/tenants/<id>")
    audit: AuditSettings = AuditSettings()
    broker: BrokerSettings = BrokerSettings()
    control: ControlSettings = ControlSettings()
    host: HostSettings = HostSettings()
    dashboard: DashboardSettings = DashboardSettings()
    templates: TemplatesSettings = TemplatesSettings()
    up: UpSettings = UpSettings()

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

    def dashboard_database_url(self) -> str:
        return self.dashboard.database_url or f"sqlite:///{self.control_dir / 'dashboard.db'}"

    def templates_database_url(self) -> str:
        """Template activations: control's, read and changed by the dashboard's Agents page."""
        url = self.dashboard.templates_database_url
        return url or f"sqlite:///{self.control_dir / 'templates.db'}"

    @property
    def host_dir(self) -> Path:
        """The host's own directory: its admin socket and ``sandboxes/<id>/`` work dirs."""
        return self.data_dir / "host"

    @property
    def host_socket(self) -> Path:
        return self.host.socket or self.host_dir / "host.sock"

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
