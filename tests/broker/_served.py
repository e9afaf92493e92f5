"""The six provider fakes served over real HTTP (uvicorn on a free port, in a thread), for tests
where another process (a broker child, ``corral broker serve``) must reach them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from corral.fakes import combined_app, create_fakes
from tests._serving import free_port


@pytest.fixture(name="served", scope="session")
def served_fixture() -> Iterator[tuple[dict[str, Any], str]]:
    fakes = create_fakes()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(combined_app(fakes), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the fakes server did not start"
        time.sleep(0.01)
    yield dict(fakes), f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
