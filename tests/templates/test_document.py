"""The template document: every refusal names its field; content hashes cover the scripts."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from corral.core.canonical import canonicalize
from corral.templates import DocumentError, load_document, load_template, parse_document
from tests.templates._catalogs import SCRIPT, T0, document, when, write_version


def problems_of(**fields: Any) -> list[str]:
    with pytest.raises(DocumentError) as caught:
        parse_document(document(**fields))
    return caught.value.problems


def role(**fields: Any) -> list[dict[str, Any]]:
    base = {"name": "front", "description": "Answers.", "entry": "agents/front.py",
            "tools": ["twilio.send_sms"]}  # fmt: skip
    return [{**base, **fields}]


# (desc, field overrides, the one problem expected)
MUTATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", {"colour": "blue"}, "colour: unknown field; the fields here are name,"),
    ("name with capitals", {"name": "Clinic"}, "name: 'Clinic' is not a name"),
    ("two-part version", {"version": "1.2"}, "version: '1.2' is not a strict SemVer 2.0.0"),
    ("v-prefixed version", {"version": "v1.2.3"}, "version: 'v1.2.3' is not a strict SemVer"),
    ("version as a number", {"version": 1.2}, "version: must be a string, got 1.2"),
    ("empty summary", {"summary": ""}, "summary: string should have at least 1 character"),
    ("no roles", {"roles": []}, "roles: list should have at least 1 item"),
    ("security as a string", {"security": "yes"}, "security: must be true or false, got 'yes'"),
    ("changelog as a list", {"changelog": ["a"]}, "changelog: must be a string, got a list"),
    ("unknown tool", {"roles": role(tools=["twilio.send_smss"])},
     "roles[0].tools[0]: unknown tool 'twilio.send_smss': not in the tool catalog (TOOLS.md); "
     "did you mean 'twilio.send_sms'?"),
    ("tool listed twice", {"roles": role(tools=["twilio.send_sms", "twilio.send_sms"])},
     "roles[0].tools: 'twilio.send_sms' is listed twice"),
    ("entry escaping the directory", {"roles": role(entry="../front.py")},
     "roles[0].entry: '../front.py' is neither 'package.module:function' nor a relative path"),
    ("absolute entry", {"roles": role(entry="/srv/front.py")}, "roles[0].entry: '/srv/front.py'"),
    ("entry without function", {"roles": role(entry="agents.front")},
     "roles[0].entry: 'agents.front' is neither"),
    ("unknown role field", {"roles": role(image="x")},
     "roles[0].image: unknown field; the fields here are name, description, entry, tools"),
    ("role without tools field", {"roles": [{"name": "front", "description": "d",
                                             "entry": "a.py"}]}, "roles[0].tools: is required"),
    ("role defined twice", {"roles": role() * 2}, "roles: role 'front' is defined twice"),
    ("naive time", {"deprecated_at": "2026-10-01T00:00:00"},
     "deprecated_at: time has no UTC offset: '2026-10-01T00:00:00'"),
    ("a date, not a time", {"deprecated_at": "2026-10-01"}, "deprecated_at: time has no UTC"),
    ("epoch seconds", {"deprecated_at": 1790000000},
     "deprecated_at: must be an RFC 3339 time with an offset, got int"),
    ("sunset before deprecation", {"deprecated_at": when("2027-01-31"),
                                   "sunset_at": when("2026-10-01")},
     "sunset_at: 2026-10-01T00:00:00.000000Z must be after deprecated_at "
     "2027-01-31T00:00:00.000000Z"),
    ("sunset at the deprecation", {"deprecated_at": when("2026-10-01"),
                                   "sunset_at": when("2026-10-01")}, "sunset_at: 2026-10-01T"),
    ("sunset without deprecation", {"sunset_at": when("2027-01-31")},
     "sunset_at: a version is deprecated before it sunsets; set deprecated_at too"),
    ("bad policy field", {"policy": {"quiet_hours": {"start": "09:00", "end": "09:00"}}},
     "policy.quiet_hours: start and end are both 09:00"),
    ("policy not a mapping", {"policy": ["x"]}, "policy: must be a mapping, got a list"),
    ("policy role denies a listed tool", {"policy": {"roles": {"front": ["stripe.*"]}}},
     "roles[0].tools: 'twilio.send_sms' is not allowed by policy.roles.front"),
]  # fmt: skip


@pytest.mark.parametrize(("desc", "fields", "expected"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_refusal_names_its_field(desc: str, fields: dict[str, Any], expected: str) -> None:
    problems = problems_of(**fields)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems[0]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(name="X", version="1.2", security=1, policy={"bogus": True})
    assert [p.split(":", 1)[0] for p in problems] == ["name", "version", "policy.bogus",
                                                      "security"]  # fmt: skip


def test_a_valid_document_reads_its_lifecycle() -> None:
    doc = parse_document(document(deprecated_at="2026-10-01T02:00:00+02:00",
                                  sunset_at=when("2027-01-31"), security=True))  # fmt: skip
    assert doc.semver.core == (1, 0, 0) and doc.security
    assert doc.deprecated_at is not None and doc.deprecated_at.utcoffset() is not None
    assert doc.is_deprecated(doc.deprecated_at) and not doc.is_deprecated(T0.replace(year=2025))
    assert doc.sunset_at is not None and doc.is_sunset(doc.sunset_at)
    assert not doc.is_sunset(doc.sunset_at.replace(microsecond=0) - timedelta(microseconds=1))
    assert doc.model_dump(mode="json")["deprecated_at"] == "2026-10-01T00:00:00.000000Z"
    assert doc.tenant_policy.zone.key == "America/Los_Angeles"
    assert doc.role("front").entry_file() == "agents/front.py"


def test_module_entries_point_at_a_file_in_the_template_directory() -> None:
    doc = parse_document(document(roles=role(entry="agents.front:main")))
    assert doc.referenced_files() == ["agents/front.py"]


# --------------------------------------------------------------------------- YAML files


def test_yaml_reads_times_as_text_and_keeps_21_00_a_string(tmp_path: Path) -> None:
    directory = write_version(tmp_path, "1.0.0")
    path = directory / "template.yaml"
    text = path.read_text() + "deprecated_at: 2026-10-01T00:00:00Z\n"
    text = text.replace("policy:\n", "policy:\n  quiet_hours: {start: 21:00, end: 08:00}\n")
    path.write_text(text)
    doc = load_document(path)
    assert doc.policy["quiet_hours"] == {"start": "21:00", "end": "08:00"}
    assert doc.deprecated_at is not None and doc.deprecated_at.isoformat() == (
        "2026-10-01T00:00:00+00:00"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nname: b\n", "template: malformed YAML: line 2, column 1: duplicate key 'name'"),
        ("name: [a\n", "template: malformed YAML: line 2, column 1:"),
        ("- a\n- b\n", "template: must be a mapping of fields, got a list"),
        (b"name: \xff\n", "template: not UTF-8 text (invalid start byte at byte 6)"),
    ],
    ids=["duplicate key", "unclosed list", "not a mapping", "not UTF-8"],
)
def test_malformed_files_name_the_file(tmp_path: Path, text: str | bytes, expected: str) -> None:
    path = tmp_path / "template.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DocumentError) as caught:
        load_document(path)
    assert caught.value.source == str(path)
    assert caught.value.problems[0].startswith(expected)
    assert caught.value.diagnostics().startswith(f"invalid template {path}:\n  template:")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="template: cannot read the file: No such file"):
        load_document(tmp_path / "template.yaml")


# ------------------------------------------------------------------------ content hashes


def test_the_content_hash_is_sha256_of_the_canonical_document_and_file_digests(
    tmp_path: Path,
) -> None:
    template = load_template(write_version(tmp_path, "1.0.0"))
    files = {"agents/front.py": "sha256:" + hashlib.sha256(SCRIPT.encode()).hexdigest()}
    body = {"document": template.document.model_dump(mode="json"), "files": files}
    assert template.content_hash == "sha256:" + hashlib.sha256(canonicalize(body)).hexdigest()


def test_the_content_hash_changes_when_a_referenced_script_changes(tmp_path: Path) -> None:
    directory = write_version(tmp_path, "1.0.0")
    before = load_template(directory).content_hash
    (directory / "agents" / "front.py").write_text(SCRIPT.replace("Hi", "Hi!"))
    assert load_template(directory).content_hash != before
    (directory / "agents" / "front.py").write_text(SCRIPT)
    assert load_template(directory).content_hash == before  # the same bytes, the same hash


def test_the_content_hash_changes_with_the_document_not_with_its_spelling(tmp_path: Path) -> None:
    a = load_template(write_version(tmp_path / "a", "1.0.0", deprecated_at=when("2026-10-01")))
    b = load_template(write_version(tmp_path / "b", "1.0.0",
                                    deprecated_at="2026-09-30T17:00:00-07:00"))  # fmt: skip
    c = load_template(write_version(tmp_path / "c", "1.0.0", deprecated_at=when("2026-10-01"),
                                    changelog="Fixed a typo."))  # fmt: skip
    assert a.content_hash == b.content_hash  # one instant, two spellings
    assert a.content_hash != c.content_hash


def test_unreferenced_files_are_outside_the_hash(tmp_path: Path) -> None:
    directory = write_version(tmp_path, "1.0.0")
    before = load_template(directory).content_hash
    (directory / "README.md").write_text("notes")
    assert load_template(directory).content_hash == before


def test_a_missing_script_is_refused_naming_the_role(tmp_path: Path) -> None:
    directory = write_version(tmp_path, "1.0.0")
    (directory / "agents" / "front.py").unlink()
    with pytest.raises(DocumentError) as caught:
        load_template(directory)
    assert caught.value.problems == [
        "roles[0].entry: cannot read agents/front.py: No such file or directory"
    ]


def test_a_script_linking_outside_the_directory_is_refused(tmp_path: Path) -> None:
    directory = write_version(tmp_path / "catalog", "1.0.0")
    outside = tmp_path / "secret.py"
    outside.write_text("print('outside')\n")
    (directory / "agents" / "front.py").unlink()
    (directory / "agents" / "front.py").symlink_to(outside)
    with pytest.raises(DocumentError, match="leads outside the template directory"):
        load_template(directory)
