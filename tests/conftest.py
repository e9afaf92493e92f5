"""Shared fixtures: test vectors and the services some tests need (PostgreSQL, dynalite).

A test that needs a service it cannot reach fails in CI (``CI`` set) and is skipped elsewhere,
with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

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
