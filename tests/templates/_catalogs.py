"""Small catalogs written into a test's directory, and the repository's own catalog.

``write_version(root, "1.0.1", security=True)`` writes ``root/clinic/1.0.1/template.yaml`` and
the one agent script it references; keyword arguments override document fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO_CATALOG = Path(__file__).resolve().parents[2] / "templates"
NAME = "clinic"
SCRIPT = 'from corral.guest import tools\n\ntools.twilio.send_sms(to="+15550100001", body="Hi")\n'
T0 = datetime(2026, 11, 2, 17, 0, tzinfo=UTC)


def document(version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
    """A valid document as a mapping (one role, ``front``, allowed ``twilio.send_sms``)."""
    doc: dict[str, Any] = {
        "name": NAME,
        "version": version,
        "summary": "A test clinic's front desk.",
        "roles": [
            {
                "name": "front",
                "description": "Answers patients.",
                "entry": "agents/front.py",
                "tools": ["twilio.send_sms"],
            }
        ],
        "policy": {"timezone": "America/Los_Angeles", "roles": {"front": ["twilio.*"]}},
    }
    doc.update(fields)
    return doc


def write_version(
    root: Path, version: str, *, name: str = NAME, script: str = SCRIPT, **fields: Any
) -> Path:
    """Write one version directory under ``root`` (a catalog); return the directory."""
    directory = root / name / version
    (directory / "agents").mkdir(parents=True, exist_ok=True)
    (directory / "agents" / "front.py").write_text(script)
    doc = document(version, name=name, **fields)
    (directory / "template.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


def when(text: str) -> str:
    """An RFC 3339 time for documents: ``when("2026-11-10")`` is that day at 00:00 UTC."""
    return f"{text}T00:00:00Z"
