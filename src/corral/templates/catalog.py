"""The template catalog: every ``<root>/<name>/<version>/template.yaml``, checked as a whole.

Each version lives at a known path, so the path is part of the contract: the directory names
must be the document's ``name`` and exact ``version`` string, and a mismatch is refused naming
the file and the field. Loading collects *every* problem of the catalog (``corral templates
check`` prints them all) and refuses the catalog if there is any: an activation must never
pin a version read from a half-valid catalog.

Files directly under ``<root>`` (a README) are ignored; hidden entries (``.git``) everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path

from corral.templates.document import DOCUMENT_FILE, DocumentError, Template, load_template
from corral.templates.version import TemplateError, Version, VersionError

__all__ = ["Catalog", "CatalogError", "UnknownTemplate"]


class CatalogError(TemplateError, ValueError):
    """A catalog with problems; ``problems`` holds each one, naming its file or directory."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.root = root
        self.problems = list(problems)
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        super().__init__(f"template catalog {root} has {count}: " + "; ".join(self.problems))

    def diagnostics(self) -> str:
        count = "1 problem" if len(self.problems) == 1 else f"{len(self.problems)} problems"
        return "\n".join(
            [f"template catalog {self.root} has {count}:", *(f"  {p}" for p in self.problems)]
        )


class UnknownTemplate(TemplateError, ValueError):
    """A template name, or a version of it, that the catalog does not have."""

    def __init__(
        self, name: str, version: str | None = None, known: list[str] | None = None
    ) -> None:
        self.name = name
        self.version = version
        if version is None:
            text = f"no template named {name!r} in the catalog"
        else:
            listed = f" (it has {', '.join(known)})" if known else ""
            text = f"template {name!r} has no version {version!r}{listed}"
        super().__init__(text)


def _visible(path: Path) -> Iterator[Path]:
    return (p for p in sorted(path.iterdir()) if not p.name.startswith("."))


@dataclass(frozen=True)
class Catalog:
    """Templates by name, each with its versions in ascending precedence."""

    root: Path
    templates: dict[str, tuple[Template, ...]]

    @classmethod
    def load(cls, root: Path) -> Catalog:
        """Load and check every version under ``root``; :class:`CatalogError` lists every
        problem when there is any."""
        catalog, problems = cls._scan(root)
        if problems:
            raise CatalogError(root, problems)
        return catalog

    @classmethod
    def check(cls, root: Path) -> list[str]:
        """Every problem of the catalog at ``root`` (empty when it loads)."""
        return cls._scan(root)[1]

    @classmethod
    def _scan(cls, root: Path) -> tuple[Catalog, list[str]]:
        if not root.is_dir():
            return cls(root, {}), [f"{root}: not a directory"]
        problems: list[str] = []
        found: dict[str, list[Template]] = {}
        for name_dir in _visible(root):
            if not name_dir.is_dir():
                continue
            versions = found.setdefault(name_dir.name, [])
            for version_dir in _visible(name_dir):
                problems += cls._load_version(name_dir.name, version_dir, versions)
            if not versions and not any(str(name_dir) in p for p in problems):
                problems.append(f"{name_dir}: a template directory without any version")
        templates: dict[str, tuple[Template, ...]] = {}
        for name, versions in found.items():
            versions.sort(key=lambda t: t.version)
            for older, newer in pairwise(versions):
                if older.version == newer.version:  # equal precedence: 1.0.0+a and 1.0.0+b
                    problems.append(
                        f"{newer.directory}: version {newer.version} has the same "
                        f"precedence as {older.version}; pins would be ambiguous"
                    )
            if versions:
                templates[name] = tuple(versions)
        return cls(root, templates), problems

    @staticmethod
    def _load_version(name: str, directory: Path, into: list[Template]) -> list[str]:
        if not directory.is_dir():
            return [f"{directory}: expected a version directory (e.g. 1.0.0), found a file"]
        try:
            Version.parse(directory.name)
        except VersionError as exc:
            return [f"{directory}: directory name {exc}"]
        path = directory / DOCUMENT_FILE
        if not path.is_file():
            return [f"{path}: missing (each version directory holds its {DOCUMENT_FILE})"]
        try:
            template = load_template(directory)
        except DocumentError as exc:
            return [f"{exc.source or path}: {problem}" for problem in exc.problems]
        problems = []
        if template.document.name != name:
            problems.append(
                f"{path}: name: {template.document.name!r} does not match its "
                f"template directory {name!r}"
            )
        if template.document.version != directory.name:
            problems.append(
                f"{path}: version: {template.document.version!r} does not match "
                f"its version directory {directory.name!r}"
            )
        if not problems:
            into.append(template)
        return problems

    # ---------------------------------------------------------------------------- queries

    def names(self) -> list[str]:
        return sorted(self.templates)

    def versions(self, name: str) -> tuple[Template, ...]:
        """Every version of ``name``, oldest first (SemVer precedence)."""
        try:
            return self.templates[name]
        except KeyError:
            raise UnknownTemplate(name) from None

    def get(self, name: str, version: str) -> Template:
        """The version whose exact string is ``version`` (an activation pins the string)."""
        versions = self.versions(name)
        for template in versions:
            if template.document.version == version:
                return template
        raise UnknownTemplate(name, version, [t.document.version for t in versions])

    def newer(self, name: str, than: Version, at: datetime) -> list[Template]:
        """Versions of ``name`` newer than ``than`` and not sunset at ``at``, oldest first."""
        return [t for t in self.versions(name) if t.version > than and not t.document.is_sunset(at)]

    def latest(self, name: str, at: datetime, *, prerelease: bool = False) -> Template | None:
        """The newest version of ``name`` not sunset at ``at`` (a release unless
        ``prerelease``), or ``None``."""
        for template in reversed(self.versions(name)):
            if template.document.is_sunset(at):
                continue
            if template.version.is_prerelease and not prerelease:
                continue
            return template
        return None
