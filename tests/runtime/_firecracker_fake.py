"""A fake Firecracker API server that checks every request against the v1.16.1 specification.

Used two ways:

- in-process (:class:`FakeFirecracker` + :func:`serve`), to run the real client against it;
- as the ``firecracker`` binary of the backend's development mode (``python
  _firecracker_fake.py --log-dir D [--fail 'PUT /path=message'] -- <firecracker args>``), so
  the whole start path, process spawn and socket wait included, runs for real.

Each request is matched to an operation of ``specs/firecracker-v1.16.1.yaml`` (method and path
template) and its body validated against the operation's ``body`` parameter schema with
``$ref``s resolved, by a Draft 4 validator (Swagger 2.0 schemas are Draft 4). Objects are
validated *strictly* (``additionalProperties: false`` where the spec lists properties), as
Firecracker's own deserializer refuses unknown fields. A body that fails answers 400 with a
``fault_message``, as Firecracker does; so do requests out of order by Firecracker's rules
(pre-boot resources after start, snapshot load after configuring boot resources, start without
a kernel or with a missing file, snapshot create while not paused).

After ``InstanceStart`` or a resuming snapshot load, the fake plays the guest: it connects to
``<vsock uds_path>_52`` (relative to its working directory, as Firecracker does) and sends one
``sandbox.ready`` frame. ``SendCtrlAltDel`` makes it print ``corral-exit: 0`` on stdout (the
guest init's line on the serial console) and exit, as a rebooting guest ends Firecracker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_PATH = (
    Path(__file__).resolve().parents[2]
    / "src"
    / "corral"
    / "runtime"
    / "specs"
    / "firecracker-v1.16.1.yaml"
)

PRE_BOOT = {
    ("PUT", "/boot-source"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("PUT", "/balloon"),
    ("PUT", "/cpu-config"),
    ("PUT", "/mmds/config"),
    ("PUT", "/serial"),
    ("PUT", "/pmem/{id}"),
}
LOGGING = {"/logger", "/metrics"}
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found"}


class Spec:
    """The Swagger 2.0 document: operations by method and path template, body schemas with
    ``$ref``s inlined."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        text = path.read_text(encoding="utf-8")
        self.document: dict[str, Any] = yaml.load(text, loader)
        self.definitions: dict[str, Any] = self.document["definitions"]
        self._templates: list[tuple[str, re.Pattern[str]]] = [
            (template, re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"))
            for template in self.document["paths"]
        ]

    def template(self, method: str, path: str) -> str | None:
        """The spec's path template for ``path`` if it has operation ``method``, else None."""
        for template, pattern in self._templates:
            if pattern.match(path) and method.lower() in self.document["paths"][template]:
                return template
        return None

    def body_parameter(self, method: str, template: str) -> dict[str, Any] | None:
        operation = self.document["paths"][template][method.lower()]
        for parameter in operation.get("parameters", []):
            if parameter.get("in") == "body":
                return dict(parameter)
        return None

    def resolve(self, schema: Any, *, strict: bool = True) -> Any:
        """``schema`` with every ``$ref`` inlined; objects closed when ``strict``."""
        if isinstance(schema, list):
            return [self.resolve(item, strict=strict) for item in schema]
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            name = schema["$ref"].removeprefix("#/definitions/")
            return self.resolve(self.definitions[name], strict=strict)
        resolved = {key: self.resolve(value, strict=strict) for key, value in schema.items()}
        if "properties" in schema:
            # property names are data, not schemas: resolve each value only
            resolved["properties"] = {
                name: self.resolve(value, strict=strict)
                for name, value in schema["properties"].items()
            }
            if strict and "additionalProperties" not in schema:
                resolved["additionalProperties"] = False
        return resolved

    def definition(self, name: str, *, strict: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self.resolve(self.definitions[name], strict=strict)
        return result

    def errors(self, method: str, path: str, body: Any) -> list[str]:
        """Why ``method path`` with ``body`` does not fit the spec (empty: it fits)."""
        template = self.template(method, path)
        if template is None:
            return [f"{method} {path} is not an operation of the spec"]
        parameter = self.body_parameter(method, template)
        if parameter is None:
            return [] if body is None else [f"{method} {template} takes no body"]
        if body is None:
            return [f"{method} {template} requires a body"] if parameter.get("required") else []
        schema = self.resolve(parameter["schema"])
        validator = jsonschema.Draft4Validator(schema)
        return [
            f"{'/'.join(map(str, error.absolute_path)) or '<body>'}: {error.message}"
            for error in validator.iter_errors(body)
        ]


@dataclass
class LogEntry:
    method: str
    path: str
    template: str | None
    body: Any
    status: int
    errors: list[str] = field(default_factory=list)
    fault: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "template": self.template,
            "body": self.body,
            "status": self.status,
            "errors": self.errors,
            "fault": self.fault,
        }


class Refused(Exception):
    """A request the fake answers with 400 and this fault message."""


class FakeFirecracker:
    """Firecracker's API semantics, as far as corral relies on them."""

    def __init__(
        self,
        *,
        spec: Spec | None = None,
        instance_id: str = "anonymous-instance",
        faults: dict[str, str] | None = None,
        play_guest: bool = False,
        log_file: Path | None = None,
    ) -> None:
        self.spec = spec or Spec()
        self.instance_id = instance_id
        self.faults = dict(faults or {})
        self.play_guest = play_guest
        self.log_file = log_file
        self.log: list[LogEntry] = []
        self.state = "Not started"
        self.configured: dict[str, Any] = {}
        self.drives: dict[str, Any] = {}
        self.exit_requested = asyncio.Event()
        self._guest_connections: list[asyncio.StreamWriter] = []

    # -- request handling ---------------------------------------------------------------------

    async def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        template = self.spec.template(method, path)
        entry = LogEntry(method, path, template, body, 204)
        errors = self.spec.errors(method, path, body)
        try:
            if errors:
                entry.errors = errors
                raise Refused("request does not fit the API specification: " + "; ".join(errors))
            fault = self.faults.get(f"{method} {template}") or self.faults.get(f"{method} {path}")
            if fault is not None:
                raise Refused(fault)
            status, payload = await self._apply(method, template or path, path, body)
            entry.status = status
        except Refused as exc:
            entry.status, entry.fault = 400, str(exc)
            status, payload = 400, {"fault_message": str(exc)}
        self.log.append(entry)
        if self.log_file is not None:
            with self.log_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry.to_json()) + "\n")
        return status, payload

    async def _apply(self, method: str, template: str, path: str, body: Any) -> tuple[int, Any]:
        key = (method, template)
        if key == ("GET", "/"):
            info = {
                "app_name": "Firecracker",
                "id": self.instance_id,
                "state": self.state,
                "vmm_version": "1.16.1",
            }
            return 200, info
        if template in LOGGING:
            if template in self.configured:
                raise Refused(f"{template.strip('/')} system already initialized")
            self._require_file(body.get("log_path") or body.get("metrics_path"))
            self.configured[template] = body
            return 204, None
        if key in PRE_BOOT:
            if self.state != "Not started":
                raise Refused(
                    "The requested operation is not supported after starting the microVM."
                )
            if template == "/drives/{drive_id}":
                if body["drive_id"] != path.rsplit("/", 1)[1]:
                    raise Refused("The id from the path does not match the id from the body!")
                self.drives[body["drive_id"]] = body
            if template == "/machine-config" and body["mem_size_mib"] < 1:
                raise Refused("The memory size (MiB) is either 0, or not a multiple of 2.")
            self.configured[template] = body
            return 204, None
        if key == ("PUT", "/actions"):
            return await self._action(body["action_type"])
        if key == ("PATCH", "/vm"):
            wanted = body["state"]
            if wanted == "Paused" and self.state != "Running":
                raise Refused("The microVM is not running")
            if wanted == "Resumed" and self.state != "Paused":
                raise Refused("The microVM is not paused")
            self.state = "Paused" if wanted == "Paused" else "Running"
            return 204, None
        if key == ("PUT", "/snapshot/create"):
            if self.state != "Paused":
                raise Refused("Cannot create a snapshot of a microVM that is not paused.")
            state = {"configured": self.configured, "drives": self.drives}
            Path(body["snapshot_path"]).write_text(json.dumps(state), encoding="utf-8")
            Path(body["mem_file_path"]).write_bytes(b"\0" * 4096)
            return 204, None
        if key == ("PUT", "/snapshot/load"):
            return await self._load(body)
        raise Refused(f"the fake does not implement {method} {template}")

    def _require_file(self, path: str | None) -> None:
        if path is not None and not Path(path).exists():
            raise Refused(f"No such file or directory: {path}")

    async def _action(self, action: str) -> tuple[int, Any]:
        if action == "InstanceStart":
            if self.state != "Not started":
                raise Refused("The microVM has already been started")
            boot = self.configured.get("/boot-source")
            if boot is None:
                raise Refused("Cannot start microvm without kernel configuration.")
            self._require_file(boot["kernel_image_path"])
            for drive in self.drives.values():
                self._require_file(drive.get("path_on_host"))
            self.state = "Running"
            self._guest_connects()
            return 204, None
        if action == "SendCtrlAltDel":
            if self.state != "Running":
                raise Refused("The microVM is not running")
            self.exit_requested.set()
            return 204, None
        raise Refused(f"unsupported action {action}")

    async def _load(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.state != "Not started" or set(self.configured) - LOGGING:
            raise Refused(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
            )
        self._require_file(body["snapshot_path"])
        self._require_file(body["mem_backend"]["backend_path"])
        saved = json.loads(Path(body["snapshot_path"]).read_text(encoding="utf-8"))
        for drive in saved["drives"].values():
            self._require_file(drive.get("path_on_host"))
        self.configured.update(saved["configured"])
        self.drives = saved["drives"]
        if "vsock_override" in body:
            vsock = dict(self.configured["/vsock"])
            vsock["uds_path"] = body["vsock_override"]["uds_path"]
            self.configured["/vsock"] = vsock
        self.state = "Running" if body.get("resume_vm") else "Paused"
        if self.state == "Running":
            self._guest_connects()
        return 204, None

    # -- the guest ----------------------------------------------------------------------------

    def _guest_connects(self) -> None:
        vsock = self.configured.get("/vsock")
        if self.play_guest and vsock is not None:
            asyncio.get_running_loop().create_task(self._guest(vsock["uds_path"] + "_52"))

    async def _guest(self, path: str) -> None:
        """What the guest init does: connect CID 2 port 52 (arriving at ``path``), say ready."""
        for _ in range(100):
            try:
                _reader, writer = await asyncio.open_unix_connection(path)
                break
            except OSError:
                await asyncio.sleep(0.02)
        else:
            return
        message = {"jsonrpc": "2.0", "method": "sandbox.ready", "params": {}}
        payload = json.dumps(message).encode()
        writer.write(struct.pack(">I", len(payload)) + payload)
        await writer.drain()
        self._guest_connections.append(writer)

    def close_guest(self) -> None:
        for writer in self._guest_connections:
            writer.close()


# ----------------------------------------------------------------------------------------------
# HTTP/1.1 over the Unix socket (Firecracker's micro_http answers in this shape).


async def _http(
    fake: FakeFirecracker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while line := await reader.readline():
            method, target, _version = line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, value = header.decode("latin-1").split(":", 1)
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            raw = await reader.readexactly(length) if length else b""
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError as exc:
                    body = {"__unparseable__": str(exc)}
            status, payload = await fake.handle(method, target, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            head = (
                f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nServer: Firecracker API\r\n"
            )
            if data:
                head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            else:
                head += "Content-Length: 0\r\n"
            writer.write(head.encode() + b"\r\n" + data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(fake: FakeFirecracker, socket_path: str) -> asyncio.Server:
    """Listen on ``socket_path`` (a path relative to the working directory is fine)."""
    return await asyncio.start_unix_server(lambda r, w: _http(fake, r, w), path=socket_path)


# ----------------------------------------------------------------------------------------------
# As the firecracker binary.


async def _main(options: argparse.Namespace) -> int:
    faults = dict(item.split("=", 1) for item in options.fail)
    log_file = Path(options.log_dir) / f"{options.id}.jsonl" if options.log_dir else None
    fake = FakeFirecracker(
        instance_id=options.id, faults=faults, play_guest=True, log_file=log_file
    )
    if options.log_dir:
        (Path(options.log_dir) / f"{options.id}.pid").write_text(str(os.getpid()))
    server = await serve(fake, options.api_sock)
    try:
        await fake.exit_requested.wait()
        await asyncio.sleep(0.01)  # let the 204 go out, as the VMM does before the guest resets
        sys.stdout.write("corral-exit: 0\r\n")
        sys.stdout.flush()
    finally:
        fake.close_guest()
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(options.api_sock)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log-dir")
    parser.add_argument("--fail", action="append", default=[], help="'METHOD /path=message'")
    parser.add_argument("--api-sock", default="/run/firecracker.socket")
    parser.add_argument("--id", default="anonymous-instance")
    options, _unknown = parser.parse_known_args(argv)
    return asyncio.run(_main(options))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
