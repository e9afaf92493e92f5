"""Strict Semantic Versioning 2.0.0 (https://semver.org): parse, order, classify an upgrade.

Parsing and precedence come from the ``semver`` package (3.x), whose grammar is the spec's:
it refuses ``1.2``, ``v1.2.3``, leading zeros (``01.2.3``, ``1.2.3-01``) and empty parts
(``1.2.3+``). Two of its leniencies are closed here, because a version string is a pin and one
pin must have one spelling: its ``$`` accepts a trailing newline (``"1.2.3\\n"``), and its
``\\d`` accepts non-ASCII digits (``"1١.2.3"`` parses as 11.2.3). Both are refused.

Precedence (§11) ignores build metadata, so two versions that differ only there are equal
(and hash alike); ``str()`` still gives back the exact text that was parsed.

>>> Version.parse("1.0.0-rc.1") < Version.parse("1.0.0") < Version.parse("1.0.1")
True
>>> classify(Version.parse("1.4.2"), Version.parse("1.5.0"))
<UpgradeKind.MINOR: 'minor'>
>>> try:
...     Version.parse("v1.2.3")
... except VersionError as exc:
...     print(exc)  # doctest: +ELLIPSIS
'v1.2.3' is not a strict SemVer 2.0.0 version (MAJOR.MINOR.PATCH, no 'v', ...)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import total_ordering

import semver

from corral.core.errors import CorralError

__all__ = ["TemplateError", "UpgradeKind", "Version", "VersionError", "classify"]

# What a SemVer string may contain at all (ASCII only); the grammar itself is semver's.
_ALPHABET = re.compile(r"[0-9A-Za-z.+-]+", re.ASCII)


class TemplateError(CorralError):
    """Base of errors raised by :mod:`corral.templates` (defined here, the module every other
    one imports)."""


class VersionError(TemplateError, ValueError):
    """A string that is not a strict SemVer 2.0.0 version."""


class UpgradeKind(StrEnum):
    """How far an upgrade moves: the most significant of major, minor, patch that changes.

    Moving from a pre-release to its own release (``1.1.0-rc.1`` to ``1.1.0``) counts as a
    patch: the major and minor numbers stay the same.
    """

    PATCH = "patch"
    MINOR = "minor"
    MAJOR = "major"


@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A parsed version; ordered, equal and hashed by SemVer precedence (§11)."""

    text: str
    _parsed: semver.Version = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``text`` strictly; raise :class:`VersionError` naming it otherwise."""
        if not isinstance(text, str):
            raise VersionError(f"a version is a string such as '1.0.0', not {type(text).__name__}")
        if _ALPHABET.fullmatch(text) is None or not semver.Version.is_valid(text):
            raise VersionError(
                f"{text!r} is not a strict SemVer 2.0.0 version (MAJOR.MINOR.PATCH, no 'v', "
                "no leading zeros, optional -PRERELEASE and +BUILD)"
            )
        return cls(text, semver.Version.parse(text))

    @property
    def major(self) -> int:
        return self._parsed.major

    @property
    def minor(self) -> int:
        return self._parsed.minor

    @property
    def patch(self) -> int:
        return self._parsed.patch

    @property
    def prerelease(self) -> str | None:
        return self._parsed.prerelease

    @property
    def build(self) -> str | None:
        return self._parsed.build

    @property
    def core(self) -> tuple[int, int, int]:
        """``(major, minor, patch)``."""
        return (self.major, self.minor, self.patch)

    @property
    def is_prerelease(self) -> bool:
        return self._parsed.prerelease is not None

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._parsed.compare(other._parsed) == 0

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._parsed.compare(other._parsed) < 0

    def __hash__(self) -> int:
        return hash((self.core, self.prerelease))


def classify(current: Version, target: Version) -> UpgradeKind:
    """The kind of the upgrade from ``current`` to ``target``; refuses anything not newer."""
    if not target > current:
        raise VersionError(f"{target} is not newer than {current}: not an upgrade")
    if target.major != current.major:
        return UpgradeKind.MAJOR
    if target.minor != current.minor:
        return UpgradeKind.MINOR
    return UpgradeKind.PATCH
