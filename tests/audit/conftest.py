"""Fixtures for the audit tests: a dynalite server shared by the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.audit import dynalite
from tests.conftest import need_service


@pytest.fixture(scope="session")
def dynalite_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an in-memory dynalite server, started once for the session."""
    reason = dynalite.missing()
    if reason is not None:
        need_service("dynalite", f"{reason}; run `npm ci` (or `make install`) in the repo root")
    log = tmp_path_factory.mktemp("dynalite") / "dynalite.log"
    server = dynalite.start(log)
    try:
        yield server.endpoint_url
    finally:
        server.stop()
