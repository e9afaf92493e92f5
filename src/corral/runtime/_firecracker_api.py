"""A small client for Firecracker's REST API over its Unix socket (release v1.16.1).

Written to ``specs/firecracker-v1.16.1.yaml`` (Swagger 2.0): every request body is built from a
frozen dataclass below whose class name is the spec's definition and whose field names are that
definition's property names, so a body is ``dataclasses.asdict`` minus unset (``None``) fields.
The tests validate each body against the operation's ``body`` schema; keep the names in step
with the spec when moving to a new Firecracker release.

Only the requests corral sends are here. A non-2xx answer raises :class:`FirecrackerAPIError`
carrying Firecracker's ``fault_message``.

Waiting for the API socket (:func:`wait_for_socket`) is a bounded poll, 1 ms growing to 5 ms,
that stops early if the process died. Firecracker publishes "API socket ready in about 12 ms";
the poll adds at most its current interval (≤ 5 ms) to that. inotify would save those few
milliseconds but needs ``ctypes`` bindings (not in the standard library) and still has to
check that the socket *accepts* (a file can exist before ``listen()``), so polling with a
``connect()`` probe is both simpler and exact about readiness.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from corral.runtime.sandbox import SandboxError

__all__ = [
    "BootSource",
    "Drive",
    "EntropyDevice",
    "FirecrackerAPI",
    "FirecrackerAPIError",
    "InstanceActionInfo",
    "InstanceInfo",
    "Logger",
    "MachineConfiguration",
    "MemoryBackend",
    "Metrics",
    "RateLimiter",
    "SnapshotCreateParams",
    "SnapshotLoadParams",
    "TokenBucket",
    "Vm",
    "Vsock",
    "VsockOverride",
    "body",
    "wait_for_socket",
]

# ----------------------------------------------------------------------------------------------
# Request bodies: class names are the spec's definitions, field names its property names.


@dataclass(frozen=True)
class Logger:
    log_path: str
    level: Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"] | None = None
    show_level: bool | None = None
    show_log_origin: bool | None = None


@dataclass(frozen=True)
class Metrics:
    metrics_path: str


@dataclass(frozen=True)
class MachineConfiguration:
    vcpu_count: int
    mem_size_mib: int
    smt: bool | None = None
    track_dirty_pages: bool | None = None


@dataclass(frozen=True)
class BootSource:
    kernel_image_path: str
    boot_args: str | None = None
    initrd_path: str | None = None


@dataclass(frozen=True)
class TokenBucket:
    size: int
    refill_time: int
    one_time_burst: int | None = None


@dataclass(frozen=True)
class RateLimiter:
    bandwidth: TokenBucket | None = None
    ops: TokenBucket | None = None


@dataclass(frozen=True)
class Drive:
    drive_id: str
    is_root_device: bool
    path_on_host: str | None = None
    is_read_only: bool | None = None
    cache_type: Literal["Unsafe", "Writeback"] | None = None
    io_engine: Literal["Sync", "Async"] | None = None
    rate_limiter: RateLimiter | None = None


@dataclass(frozen=True)
class Vsock:
    guest_cid: int
    uds_path: str


@dataclass(frozen=True)
class EntropyDevice:
    rate_limiter: RateLimiter | None = None


@dataclass(frozen=True)
class InstanceActionInfo:
    action_type: Literal["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]


@dataclass(frozen=True)
class Vm:
    state: Literal["Paused", "Resumed"]


@dataclass(frozen=True)
class SnapshotCreateParams:
    snapshot_path: str
    mem_file_path: str
    snapshot_type: Literal["Full", "Diff"] | None = None


@dataclass(frozen=True)
class MemoryBackend:
    backend_type: Literal["File", "Uffd"]
    backend_path: str


@dataclass(frozen=True)
class VsockOverride:
    uds_path: str


@dataclass(frozen=True)
class SnapshotLoadParams:
    snapshot_path: str
    mem_backend: MemoryBackend
    resume_vm: bool | None = None
    track_dirty_pages: bool | None = None
    vsock_override: VsockOverride | None = None


@dataclass(frozen=True)
class InstanceInfo:
    """The answer to ``GET /`` (``describeInstance``)."""

    app_name: str
    id: str
    state: Literal["Not started", "Running", "Paused"]
    vmm_version: str


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def body(request: Any) -> dict[str, Any]:
    """The JSON body for one of the dataclasses above: unset (``None``) fields are omitted,
    because Firecracker treats an absent optional field as its default but refuses ``null``."""
    if not dataclasses.is_dataclass(request) or isinstance(request, type):
        raise TypeError(f"not a request dataclass: {request!r}")
    result: dict[str, Any] = _drop_none(dataclasses.asdict(request))
    return result


# ----------------------------------------------------------------------------------------------
# Errors and the socket wait.


class FirecrackerAPIError(SandboxError):
    """Firecracker answered a request with a non-2xx status; ``fault_message`` says why."""

    def __init__(self, method: str, path: str, status: int, fault_message: str) -> None:
        super().__init__(f"Firecracker refused {method} {path} ({status}): {fault_message}")
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message


def _accepts(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.05)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def wait_for_socket(
    path: str,
    *,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Return once ``path`` accepts connections; raise :class:`SandboxError` if ``alive()``
    turns false (the process died) or ``timeout_s`` passes. See the module docstring for why
    this polls."""
    deadline = time.monotonic() + timeout_s
    interval = 0.001
    while True:
        if _accepts(path):
            return
        if not alive():
            raise SandboxError(f"the process exited before its API socket {path} accepted")
        if time.monotonic() >= deadline:
            raise SandboxError(f"API socket {path} did not accept within {timeout_s:g} s")
        await asyncio.sleep(interval)
        interval = min(interval * 2, 0.005)


# ----------------------------------------------------------------------------------------------
# The client.


class FirecrackerAPI:
    """One Firecracker process's API, over its Unix socket (``host: localhost``, as the spec
    says). One method per request corral sends; each waits for Firecracker's answer (204), so
    requests are never pipelined before the previous one was applied."""

    def __init__(
        self,
        socket_path: str,
        *,
        timeout_s: float = 5.0,
        slow_timeout_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._slow_timeout_s = slow_timeout_s
        self._client = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://localhost",
            timeout=timeout_s,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> FirecrackerAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(
        self, method: str, path: str, request: Any = None, *, slow: bool = False
    ) -> httpx.Response:
        json_body = None if request is None else body(request)
        timeout = self._slow_timeout_s if slow else httpx.USE_CLIENT_DEFAULT
        response = await self._client.request(method, path, json=json_body, timeout=timeout)
        if not 200 <= response.status_code < 300:
            raise FirecrackerAPIError(method, path, response.status_code, _fault(response))
        return response

    async def put_logger(self, logger: Logger) -> None:
        await self._send("PUT", "/logger", logger)

    async def put_metrics(self, metrics: Metrics) -> None:
        await self._send("PUT", "/metrics", metrics)

    async def put_machine_config(self, config: MachineConfiguration) -> None:
        await self._send("PUT", "/machine-config", config)

    async def put_boot_source(self, source: BootSource) -> None:
        await self._send("PUT", "/boot-source", source)

    async def put_drive(self, drive: Drive) -> None:
        await self._send("PUT", f"/drives/{drive.drive_id}", drive)

    async def put_vsock(self, vsock: Vsock) -> None:
        await self._send("PUT", "/vsock", vsock)

    async def put_entropy(self, device: EntropyDevice) -> None:
        await self._send("PUT", "/entropy", device)

    async def instance_start(self) -> None:
        await self._send("PUT", "/actions", InstanceActionInfo("InstanceStart"))

    async def send_ctrl_alt_del(self) -> None:
        await self._send("PUT", "/actions", InstanceActionInfo("SendCtrlAltDel"))

    async def pause(self) -> None:
        await self._send("PATCH", "/vm", Vm("Paused"))

    async def resume(self) -> None:
        await self._send("PATCH", "/vm", Vm("Resumed"))

    async def create_snapshot(self, params: SnapshotCreateParams) -> None:
        await self._send("PUT", "/snapshot/create", params, slow=True)

    async def load_snapshot(self, params: SnapshotLoadParams) -> None:
        await self._send("PUT", "/snapshot/load", params, slow=True)

    async def describe_instance(self) -> InstanceInfo:
        data = (await self._send("GET", "/")).json()
        return InstanceInfo(
            app_name=str(data["app_name"]),
            id=str(data["id"]),
            state=data["state"],
            vmm_version=str(data["vmm_version"]),
        )


def _fault(response: httpx.Response) -> str:
    """Firecracker's ``Error`` body is ``{"fault_message": "..."}``; fall back to the raw text."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("fault_message"), str):
        return str(data["fault_message"])
    return response.text.strip() or response.reason_phrase
