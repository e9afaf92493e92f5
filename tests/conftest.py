"""Shared fixtures: test vectors and the services some tests need (PostgreSQL, dynalite).

A test that needs a service it cannot reach fails in CI (``CI`` set) and is skipped elsewhere,
with the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# No per-example deadline: speed is measured by the benchmarks, never by a test, and a shared
# 2-core machine can pause any example past hypothesis's default 200 ms.
settings.register_profile("corral", deadline=None)
settings.load_profile("corral")

VECTORS = Path(__file__).parent / "vectors"


def vector(name: str) -> Any:
    """Load a JSON vector file from ``tests/vectors`` (provenance in its README)."""
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def need_service(what: str, reason: str) -> None:
    """Fail in CI, skip elsewhere: a missing service must never pass silently in CI."""
    message = f"{what} is not available: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: every test there must run (README, .ci/run)."""
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped:
        reporter.write_line(f"CI: {len(skipped)} tests were skipped; in CI every test must run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def dynalite_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an in-memory dynalite server (npm), started once for the session."""
    from tests import dynalite

    reason = dynalite.missing()
    if reason is not None:
        need_service("dynalite", f"{reason}; run `npm ci` (or `make install`) in the repo root")
    log = tmp_path_factory.mktemp("dynalite") / "dynalite.log"
    server = dynalite.start(log)
    try:
        yield server.endpoint_url
    finally:
        server.stop()
