"""``corral templates ls | show | check`` through typer's CliRunner: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app
from corral.templates import Catalog
from tests.templates._catalogs import REPO_CATALOG, write_version

runner = CliRunner()
CATALOG = ["--catalog", str(REPO_CATALOG)]


def test_ls_shows_versions_and_their_lifecycle_at_a_time() -> None:
    result = runner.invoke(app, ["templates", "ls", *CATALOG, "--at", "2027-01-31T00:00:00Z"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    cells = [[cell.strip() for cell in row.strip("│").split("│")] for row in rows]
    assert cells == [
        ["dental-front-desk", "1.0.0", "", "2026-10-01", "2027-01-31", "sunset"],
        ["", "1.0.1", "security", "-", "-", "active"],
        ["", "1.1.0", "", "-", "-", "active"],
        ["", "2.0.0", "latest", "-", "-", "active"],
    ]
    header = result.stdout.splitlines()[1]
    assert [h.strip() for h in header.strip("┃").split("┃")] == [
        "template", "version", "notes", "deprecated", "sunset", "status"
    ]  # fmt: skip


def test_ls_before_the_deprecation_says_active() -> None:
    result = runner.invoke(app, ["templates", "ls", *CATALOG, "--at", "2026-09-30T23:59:59Z"])
    assert result.exit_code == 0
    first = next(line for line in result.stdout.splitlines() if "1.0.0" in line)
    assert first.rstrip("│ ").endswith("active")


def test_ls_refuses_a_bad_time() -> None:
    result = runner.invoke(app, ["templates", "ls", *CATALOG, "--at", "2027-01-31"])
    assert result.exit_code == 1
    assert result.stderr == "error: --at: time has no UTC offset: '2027-01-31'\n"


def test_show_prints_one_version() -> None:
    result = runner.invoke(app, ["templates", "show", "dental-front-desk", "1.0.1", *CATALOG])
    assert result.exit_code == 0, result.output
    digest = Catalog.load(REPO_CATALOG).get("dental-front-desk", "1.0.1").content_hash
    lines = result.stdout.splitlines()
    assert lines[:8] == [
        "dental-front-desk 1.0.1",
        "summary: Front desk of a small dental clinic: answers patients, books and cancels "
        "appointments, takes copays, follows up after visits.",
        f"content hash: {digest}",
        "security fix: yes",
        "deprecated at: -",
        "sunset at: -",
        "roles:",
        "  receptionist (agents/receptionist.py): google_calendar.list_events, twilio.send_sms",
    ]
    assert '    "timezone": "America/Los_Angeles",' in lines
    assert "  Security: the follow-up text no longer names the patient or the treatment." in lines


def test_show_json_is_the_document_and_its_hash() -> None:
    result = runner.invoke(
        app, ["templates", "show", "dental-front-desk", "1.0.0", *CATALOG, "--json"]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    template = Catalog.load(REPO_CATALOG).get("dental-front-desk", "1.0.0")
    assert body == {**template.document.model_dump(mode="json"),
                    "content_hash": template.content_hash}  # fmt: skip
    assert body["sunset_at"] == "2027-01-31T00:00:00.000000Z"


def test_show_names_an_unknown_version() -> None:
    result = runner.invoke(app, ["templates", "show", "dental-front-desk", "1.0", *CATALOG])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        "error: template 'dental-front-desk' has no version '1.0' "
        "(it has 1.0.0, 1.0.1, 1.1.0, 2.0.0)\n"
    )


def test_check_accepts_the_demo_catalog() -> None:
    result = runner.invoke(app, ["templates", "check", str(REPO_CATALOG)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"ok: 1 template, 4 versions in {REPO_CATALOG}\n"


def test_check_names_every_problem_and_exits_non_zero(tmp_path: Path) -> None:
    mismatched = write_version(tmp_path, "1.0.1") / "template.yaml"
    mismatched.write_text(mismatched.read_text().replace("version: 1.0.1", "version: 1.0.2"))
    unknown = write_version(tmp_path, "1.1.0", roles=[{
        "name": "front", "description": "d", "entry": "agents/front.py",
        "tools": ["twilio.send_fax"]}]) / "template.yaml"  # fmt: skip
    result = runner.invoke(app, ["templates", "check", str(tmp_path)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"error: template catalog {tmp_path} has 2 problems:\n"
        f"  {mismatched}: version: '1.0.2' does not match its version directory '1.0.1'\n"
        f"  {unknown}: roles[0].tools[0]: unknown tool 'twilio.send_fax': not in the tool "
        "catalog (TOOLS.md); did you mean 'twilio.send_sms'?\n"
    )


def test_ls_refuses_a_broken_catalog(tmp_path: Path) -> None:
    result = runner.invoke(app, ["templates", "ls", "--catalog", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: template catalog {tmp_path / 'missing'} has 1 problem:\n"
        f"  {tmp_path / 'missing'}: not a directory\n"
    )
