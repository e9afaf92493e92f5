"""Strict SemVer 2.0.0: the grammar, §11 precedence, and upgrade kinds."""

from __future__ import annotations

import doctest
import functools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.templates import version as version_module
from corral.templates.version import UpgradeKind, Version, VersionError, classify

REJECTED = [
    ("two parts", "1.2"),
    ("one part", "1"),
    ("four parts", "1.2.3.4"),
    ("v prefix", "v1.2.3"),
    ("leading zero major", "01.2.3"),
    ("leading zero minor", "1.02.3"),
    ("leading zero patch", "1.2.03"),
    ("leading zero numeric pre-release", "1.2.3-01"),
    ("leading zero in a later pre-release part", "1.2.3-rc.01"),
    ("empty build", "1.2.3+"),
    ("empty pre-release", "1.2.3-"),
    ("empty pre-release part", "1.2.3-rc..1"),
    ("empty build part", "1.2.3+a..b"),
    ("trailing newline (semver's $ accepts it)", "1.2.3\n"),
    ("non-ASCII digit (semver's \\d accepts it)", "1\u0661.2.3"),
    ("non-ASCII digit in pre-release", "1.2.3-\u0661"),
    ("leading space", " 1.2.3"),
    ("trailing space", "1.2.3 "),
    ("underscore in pre-release", "1.2.3-rc_1"),
    ("negative", "-1.2.3"),
    ("empty", ""),
    ("wildcard", "1.2.x"),
]
ACCEPTED = [
    ("plain", "1.2.3", (1, 2, 3), None, None),
    ("zeros", "0.0.0", (0, 0, 0), None, None),
    ("pre-release and build", "1.2.3-rc.1+build.5", (1, 2, 3), "rc.1", "build.5"),
    ("hyphens in identifiers", "1.0.0-x-y-z.--", (1, 0, 0), "x-y-z.--", None),
    ("build with leading zeros (allowed there)", "1.0.0+001", (1, 0, 0), None, "001"),
    ("alphanumeric starting with a digit", "1.0.0-0abc", (1, 0, 0), "0abc", None),
    ("large numbers", "12345678901234567890.0.0", (12345678901234567890, 0, 0), None, None),
]
# semver.org §11.4, in increasing precedence, plus §11.2/§11.3 examples.
PRECEDENCE = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "2.0.0",
    "2.1.0",
    "2.1.1",
]
PAIRS = [
    ("numeric identifiers compare numerically", "1.0.0-2", "1.0.0-10"),
    ("numeric below alphanumeric", "1.0.0-99", "1.0.0-a"),
    ("alphanumeric compare in ASCII order", "1.0.0-Z", "1.0.0-a"),
    ("a larger set of fields wins when the rest are equal", "1.0.0-a", "1.0.0-a.0"),
    ("pre-release below its release", "1.0.0-rc.99", "1.0.0"),
    ("a release below the next patch's pre-release", "1.0.0", "1.0.1-alpha"),
]


@pytest.mark.parametrize(("desc", "text"), REJECTED, ids=[d for d, _ in REJECTED])
def test_rejects(desc: str, text: str) -> None:
    with pytest.raises(VersionError, match="not a strict SemVer"):
        Version.parse(text)


def test_rejects_a_non_string() -> None:
    with pytest.raises(VersionError, match="not float"):
        Version.parse(1.2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("desc", "text", "core", "pre", "build"), ACCEPTED, ids=[a[0] for a in ACCEPTED]
)
def test_accepts(
    desc: str, text: str, core: tuple[int, int, int], pre: str | None, build: str | None
) -> None:
    parsed = Version.parse(text)
    assert (parsed.core, parsed.prerelease, parsed.build, str(parsed)) == (core, pre, build, text)
    assert parsed.is_prerelease is (pre is not None)


@pytest.mark.parametrize("i", range(len(PRECEDENCE) - 1), ids=PRECEDENCE[:-1])
def test_precedence_of_semver_org_section_11(i: int) -> None:
    lower, higher = Version.parse(PRECEDENCE[i]), Version.parse(PRECEDENCE[i + 1])
    assert lower < higher and higher > lower and lower != higher


def test_precedence_sorts_the_list() -> None:
    shuffled = PRECEDENCE[::-1][3:] + PRECEDENCE[::-1][:3]
    assert [str(v) for v in sorted(Version.parse(s) for s in shuffled)] == PRECEDENCE


@pytest.mark.parametrize(("desc", "lower", "higher"), PAIRS, ids=[p[0] for p in PAIRS])
def test_precedence_pairs(desc: str, lower: str, higher: str) -> None:
    assert Version.parse(lower) < Version.parse(higher)


def test_build_metadata_is_ignored_by_precedence_but_kept_in_text() -> None:
    a, b = Version.parse("1.0.0+a"), Version.parse("1.0.0+b")
    assert a == b and hash(a) == hash(b) and not a < b
    assert (str(a), str(b)) == ("1.0.0+a", "1.0.0+b")
    assert len({a, b, Version.parse("1.0.0")}) == 1


CLASSIFY = [
    ("patch", "1.0.0", "1.0.1", UpgradeKind.PATCH),
    ("patch skipping patches", "1.0.0", "1.0.7", UpgradeKind.PATCH),
    ("minor", "1.0.3", "1.1.0", UpgradeKind.MINOR),
    ("major", "1.4.2", "2.0.0", UpgradeKind.MAJOR),
    ("major from 0.x", "0.9.9", "1.0.0", UpgradeKind.MAJOR),
    ("pre-release to its release", "1.1.0-rc.1", "1.1.0", UpgradeKind.PATCH),
    ("to a minor's pre-release", "1.0.0", "1.1.0-rc.1", UpgradeKind.MINOR),
]


@pytest.mark.parametrize(
    ("desc", "current", "target", "kind"), CLASSIFY, ids=[c[0] for c in CLASSIFY]
)
def test_classify(desc: str, current: str, target: str, kind: UpgradeKind) -> None:
    assert classify(Version.parse(current), Version.parse(target)) is kind


@pytest.mark.parametrize(("current", "target"), [("1.0.1", "1.0.0"), ("1.0.0", "1.0.0+b")])
def test_classify_refuses_what_is_not_newer(current: str, target: str) -> None:
    with pytest.raises(VersionError, match="not an upgrade"):
        classify(Version.parse(current), Version.parse(target))


def test_doctests() -> None:
    assert doctest.testmod(version_module).failed == 0


# ------------------------------------------------------------------- properties


_NUMBER = st.integers(min_value=0, max_value=10**6)
_NUMERIC_ID = _NUMBER.map(str)
_ALNUM_ID = st.from_regex(re.compile(r"[0-9A-Za-z-]*[A-Za-z-][0-9A-Za-z-]*", re.ASCII),
                          fullmatch=True).filter(lambda s: 0 < len(s) <= 8)  # fmt: skip
_BUILD_ID = st.from_regex(re.compile(r"[0-9A-Za-z-]{1,8}", re.ASCII), fullmatch=True)


@st.composite
def versions(draw: st.DrawFn, release: bool = False) -> str:
    core = ".".join(str(draw(_NUMBER)) for _ in range(3))
    if release:
        return core
    pre = draw(st.lists(_NUMERIC_ID | _ALNUM_ID, max_size=3))
    build = draw(st.lists(_BUILD_ID, max_size=2))
    return core + ("-" + ".".join(pre) if pre else "") + ("+" + ".".join(build) if build else "")


def _reference_cmp(a: str, b: str) -> int:
    """§11 transcribed literally, as the cross-check of the library's ordering."""

    def split(text: str) -> tuple[list[int], list[str]]:
        text = text.split("+", 1)[0]
        core, _, pre = text.partition("-")
        return [int(n) for n in core.split(".")], pre.split(".") if pre else []

    (core_a, pre_a), (core_b, pre_b) = split(a), split(b)
    if core_a != core_b:
        return -1 if core_a < core_b else 1
    if not pre_a or not pre_b:  # §11.3: a pre-release is below its release
        return (len(pre_b) > 0) - (len(pre_a) > 0) if pre_a or pre_b else 0
    for x, y in zip(pre_a, pre_b, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        if x.isdigit() or y.isdigit():  # §11.4.3: numeric identifiers are lower
            return -1 if x.isdigit() else 1
        return -1 if x < y else 1
    return (len(pre_a) > len(pre_b)) - (len(pre_a) < len(pre_b))


@settings(deadline=None)  # never a wall-clock assertion
@given(versions())
def test_format_parse_round_trips(text: str) -> None:
    assert str(Version.parse(text)) == text


@settings(deadline=None)  # never a wall-clock assertion
@given(versions(), versions())
def test_ordering_matches_the_reference(a: str, b: str) -> None:
    va, vb = Version.parse(a), Version.parse(b)
    expected = _reference_cmp(a, b)
    assert (va < vb, va == vb, va > vb) == (expected < 0, expected == 0, expected > 0)


@settings(deadline=None)  # never a wall-clock assertion
@given(versions(), versions(), versions())
def test_ordering_is_a_total_order(a: str, b: str, c: str) -> None:
    va, vb, vc = Version.parse(a), Version.parse(b), Version.parse(c)
    assert sum((va < vb, va == vb, va > vb)) == 1  # trichotomy
    if va <= vb and vb <= vc:
        assert va <= vc  # transitivity
    if va == vb:
        assert hash(va) == hash(vb)


@settings(deadline=None)  # never a wall-clock assertion
@given(versions(release=True), versions(release=True))
def test_release_ordering_is_tuple_ordering(a: str, b: str) -> None:
    va, vb = Version.parse(a), Version.parse(b)
    assert (va < vb) == (va.core < vb.core) and (va == vb) == (va.core == vb.core)


@settings(deadline=None)  # never a wall-clock assertion
@given(st.lists(versions(), min_size=1, max_size=8))
def test_sorting_agrees_with_the_reference(texts: list[str]) -> None:
    ours = [str(v) for v in sorted(Version.parse(t) for t in texts)]
    reference = sorted(texts, key=functools.cmp_to_key(_reference_cmp))
    assert [Version.parse(t) for t in ours] == [Version.parse(t) for t in reference]
