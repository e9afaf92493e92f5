"""The catalog: the demo business's templates, and every way a catalog can be wrong."""

from __future__ import annotations

import ast
import keyword
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral.connectors import catalog as tool_catalog
from corral.templates import Catalog, CatalogError, Template, UnknownTemplate
from tests.templates._catalogs import REPO_CATALOG, when, write_version

DEMO = "dental-front-desk"


@pytest.fixture(name="repo", scope="module")
def repo_fixture() -> Catalog:
    return Catalog.load(REPO_CATALOG)


# ------------------------------------------------------------------ the demo catalog


def test_the_demo_catalog_has_its_four_versions(repo: Catalog) -> None:
    assert repo.names() == [DEMO]
    versions = repo.versions(DEMO)
    assert [t.document.version for t in versions] == ["1.0.0", "1.0.1", "1.1.0", "2.0.0"]
    assert [t.document.security for t in versions] == [False, True, False, False]
    first = versions[0].document
    assert first.deprecated_at == datetime(2026, 10, 1, tzinfo=UTC)
    assert first.sunset_at == datetime(2027, 1, 31, tzinfo=UTC)
    assert all(t.document.sunset_at is None for t in versions[1:])
    assert len({t.content_hash for t in versions}) == 4
    for template in versions:
        assert [r.name for r in template.document.roles] == [
            "receptionist", "booking", "billing", "follow-up"
        ]  # fmt: skip


def test_latest_skips_sunset_and_prerelease_versions(repo: Catalog, tmp_path: Path) -> None:
    assert repo.latest(DEMO, datetime(2027, 6, 1, tzinfo=UTC)) is not None
    write_version(tmp_path, "1.0.0", deprecated_at=when("2026-01-01"), sunset_at=when("2026-06-01"))
    write_version(tmp_path, "1.1.0-rc.1")
    catalog = Catalog.load(tmp_path)
    before, after = datetime(2026, 5, 31, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    assert str(_version(catalog.latest("clinic", before))) == "1.0.0"
    assert catalog.latest("clinic", after) is None  # 1.0.0 sunset; the rc is not a release
    assert str(_version(catalog.latest("clinic", after, prerelease=True))) == "1.1.0-rc.1"


def _version(template: Template | None) -> object:
    assert template is not None
    return template.version


def _scripts() -> list[Path]:
    return sorted(REPO_CATALOG.rglob("*.py"))


def test_there_is_a_script_per_role_and_version() -> None:
    assert len(_scripts()) == 16


@pytest.mark.parametrize("path", _scripts(), ids=lambda p: str(p.relative_to(REPO_CATALOG)))
def test_every_script_is_valid_python(path: Path) -> None:
    compile(path.read_text(), str(path), "exec")


def _calls(path: Path) -> list[tuple[str, list[str], int]]:
    """``tools.<provider>.<tool>(kw=...)`` calls in a script: (tool, keyword names, line)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        provider = node.func.value
        if (
            isinstance(provider, ast.Attribute)
            and isinstance(provider.value, ast.Name)
            and provider.value.id == "tools"
        ):
            names = [k.arg for k in node.keywords if k.arg is not None]
            found.append((f"{provider.attr}.{node.func.attr}", names, node.lineno))
    return found


def _wire(name: str) -> str:
    """The guest SDK's spelling: ``from_`` is sent as ``from``."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def test_every_tool_a_role_lists_or_a_script_calls_is_real_and_allowed(repo: Catalog) -> None:
    tools = tool_catalog()
    checked = 0
    for template in repo.versions(DEMO):
        for role in template.document.roles:
            assert set(role.tools) <= set(tools), role.tools
            calls = _calls(template.directory / role.entry_file())
            assert calls, f"{role.entry} calls no tool"
            for tool, names, line in calls:
                where = f"{template.document.version} {role.entry}:{line}"
                assert tool in tools, f"{where}: {tool} is not a catalog tool"
                assert tool in role.tools, f"{where}: {tool} is not in role {role.name}'s tools"
                fields = tools[tool].args.model_fields
                known = {f.alias or n for n, f in fields.items()}
                assert {_wire(n) for n in names} <= known, f"{where}: {names} vs {known}"
                checked += 1
    assert checked >= 40


def test_the_security_release_fixes_what_its_changelog_says(repo: Catalog) -> None:
    old, fixed = (repo.get(DEMO, v) for v in ("1.0.0", "1.0.1"))
    assert "procedure" in (old.directory / "agents/follow_up.py").read_text()
    assert "procedure" not in (fixed.directory / "agents/follow_up.py").read_text()
    assert "Security:" in fixed.document.changelog
    for name in ("receptionist", "booking", "billing"):  # the fix is the only change
        path = f"agents/{name}.py"
        assert (old.directory / path).read_text() == (
            (fixed.directory / path).read_text().replace("1.0.1", "1.0.0")
        )


def test_the_major_release_drops_direct_texts(repo: Catalog) -> None:
    major = repo.get(DEMO, "2.0.0")
    assert all("twilio.send_sms" not in role.tools for role in major.document.roles)
    assert "Breaking" in major.document.changelog


# ------------------------------------------------------------------- catalog problems


def problems(root: Path) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        Catalog.load(root)
    assert Catalog.check(root) == caught.value.problems
    return caught.value.problems


def test_a_version_directory_must_match_the_document(tmp_path: Path) -> None:
    directory = write_version(tmp_path, "1.0.1")
    path = directory / "template.yaml"
    path.write_text(path.read_text().replace("version: 1.0.1", "version: 1.0.2"))
    assert problems(tmp_path) == [
        f"{path}: version: '1.0.2' does not match its version directory '1.0.1'"
    ]


def test_a_template_directory_must_match_the_name(tmp_path: Path) -> None:
    write_version(tmp_path, "1.0.0", name="clinic")
    (tmp_path / "clinic").rename(tmp_path / "salon")
    path = tmp_path / "salon" / "1.0.0" / "template.yaml"
    assert problems(tmp_path) == [
        f"{path}: name: 'clinic' does not match its template directory 'salon'"
    ]


def test_the_version_must_match_exactly_not_by_precedence(tmp_path: Path) -> None:
    path = write_version(tmp_path, "1.0.0") / "template.yaml"
    path.write_text(path.read_text().replace("version: 1.0.0", "version: 1.0.0+build.1"))
    assert problems(tmp_path)[0].endswith(
        "version: '1.0.0+build.1' does not match its version directory '1.0.0'"
    )


def test_every_problem_is_listed(tmp_path: Path) -> None:
    write_version(tmp_path, "1.0.0")
    (tmp_path / "clinic" / "v1.1.0").mkdir()
    (tmp_path / "clinic" / "1.2.0").mkdir()
    (tmp_path / "clinic" / "notes.txt").write_text("x")
    bad = write_version(tmp_path, "1.3.0", security="yes")
    write_version(tmp_path, "2.0.0+a")
    write_version(tmp_path, "2.0.0+b")
    (tmp_path / "empty").mkdir()
    (tmp_path / "README.md").write_text("ignored")
    (tmp_path / ".git").mkdir()
    clinic = tmp_path / "clinic"
    assert problems(tmp_path) == [
        f"{clinic / '1.2.0' / 'template.yaml'}: missing (each version directory holds its "
        "template.yaml)",
        f"{bad / 'template.yaml'}: security: must be true or false, got 'yes'",
        f"{clinic / 'notes.txt'}: expected a version directory (e.g. 1.0.0), found a file",
        f"{clinic / 'v1.1.0'}: directory name 'v1.1.0' is not a strict SemVer 2.0.0 version "
        "(MAJOR.MINOR.PATCH, no 'v', no leading zeros, optional -PRERELEASE and +BUILD)",
        f"{tmp_path / 'empty'}: a template directory without any version",
        f"{clinic / '2.0.0+b'}: version 2.0.0+b has the same precedence as 2.0.0+a; pins "
        "would be ambiguous",
    ]


def test_a_missing_catalog_is_a_problem(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: not a directory"]


def test_unknown_names_and_versions(tmp_path: Path) -> None:
    write_version(tmp_path, "1.0.0")
    write_version(tmp_path, "1.1.0")
    catalog = Catalog.load(tmp_path)
    with pytest.raises(UnknownTemplate, match="no template named 'salon'"):
        catalog.get("salon", "1.0.0")
    with pytest.raises(UnknownTemplate, match=r"'clinic' has no version '1.0' \(it has 1.0.0, "):
        catalog.get("clinic", "1.0")


def test_newer_lists_versions_above_the_pin_that_are_not_sunset(tmp_path: Path) -> None:
    write_version(tmp_path, "1.0.0")
    write_version(tmp_path, "1.0.1", deprecated_at=when("2026-01-01"),
                  sunset_at=when("2026-03-01"))  # fmt: skip
    write_version(tmp_path, "1.1.0")
    catalog = Catalog.load(tmp_path)
    pin = catalog.get("clinic", "1.0.0").version
    at = datetime(2026, 3, 1, tzinfo=UTC)
    assert [t.document.version for t in catalog.newer("clinic", pin, at)] == ["1.1.0"]
    earlier = at - timedelta(microseconds=1)
    assert [t.document.version for t in catalog.newer("clinic", pin, earlier)] == [
        "1.0.1", "1.1.0"
    ]  # fmt: skip
