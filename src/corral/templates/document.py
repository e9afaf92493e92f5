"""The template document (``template.yaml``): one version of an agent setup, validated.

A document names the template and its exact version, describes each agent role (its entry
point and the catalog tools it may call), carries the tenant policy defaults
(``TOOLS.md``, "Tenant policy (version 1)") and the version's lifecycle: ``deprecated_at``,
``sunset_at`` and whether it fixes a security issue. Every refusal is a
:class:`DocumentError` listing *all* problems as ``"<field path>: <what is wrong>"``.

Its :meth:`~TemplateDocument.content_hash` is what an activation pins and the audit chain
records: SHA-256 over the RFC 8785 form of the validated document together with the SHA-256
of every file it references, so changing one line of one agent script changes the hash.

YAML is read as ``yaml.safe_load`` does, with the policy loader's two changes (duplicate keys
refused; YAML 1.2 core-schema scalars, so ``21:00`` stays a string), and no implicit
timestamps: times are RFC 3339 strings with an offset, read by one parser.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from corral.connectors import catalog
from corral.core.canonical import canonicalize
from corral.core.clock import format_time, parse_time
from corral.core.errors import CanonicalizationError
from corral.core.strict_yaml import strict_loader
from corral.supervisor.policy import PolicyError, TenantPolicy, load_policy
from corral.templates.version import TemplateError, Version

__all__ = [
    "DOCUMENT_FILE",
    "DocumentError",
    "Role",
    "Template",
    "TemplateDocument",
    "load_document",
    "load_template",
    "parse_document",
]

#: The file name of a version's document inside its directory.
DOCUMENT_FILE = "template.yaml"

_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_ENTRY = re.compile(rf"{_IDENT}(?:\.{_IDENT})*:{_IDENT}(?:\.{_IDENT})*", re.ASCII)
# Relative POSIX path to a .py file; no segment starts with '.', so no '..', '.' or hidden file.
_SCRIPT_ENTRY = re.compile(
    r"(?:[A-Za-z0-9_][A-Za-z0-9_.-]*/)*[A-Za-z0-9_][A-Za-z0-9_.-]*\.py", re.ASCII
)


class DocumentError(TemplateError, ValueError):
    """A template document that cannot be used; ``problems`` holds each ``"<path>: <message>"``.

    ``source`` names the file the document came from, when it came from one.
    """

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" {source}" if source else ""
        text = f"invalid template{where}: " + "; ".join(self.problems)
        super().__init__(text)

    def diagnostics(self) -> str:
        where = f" {self.source}" if self.source else ""
        return "\n".join([f"invalid template{where}:", *(f"  {p}" for p in self.problems)])


# --- field types -----------------------------------------------------------------------------


def _instant(value: Any) -> Any:
    """RFC 3339 text with an offset (or an aware datetime); nothing else is a time here."""
    if isinstance(value, str):
        return parse_time(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("time has no UTC offset")
        return value
    raise ValueError(f"must be an RFC 3339 time with an offset, got {type(value).__name__}")


_Instant = Annotated[datetime, BeforeValidator(_instant), PlainSerializer(format_time)]
_Name = Annotated[str, Field(pattern=_NAME)]


def _version(value: str) -> str:
    Version.parse(value)  # raises VersionError (a ValueError): pydantic reports it on the field
    return value


def _entry(value: str) -> str:
    if _MODULE_ENTRY.fullmatch(value) or _SCRIPT_ENTRY.fullmatch(value):
        return value
    raise ValueError(
        f"{value!r} is neither 'package.module:function' nor a relative path to a .py file "
        "inside the template directory"
    )


def _tool(value: str) -> str:
    tools = catalog()
    if value in tools:
        return value
    close = difflib.get_close_matches(value, list(tools), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown tool {value!r}: not in the tool catalog (TOOLS.md){hint}")


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Role(_Model):
    """One agent of the template: what it is for, how it starts, which tools it may call."""

    name: _Name
    description: Annotated[str, Field(min_length=1, max_length=2000)]
    entry: Annotated[str, AfterValidator(_entry)]
    """``package.module:function`` (the module a file in the template directory) or a path to
    a ``.py`` script relative to the template directory."""
    tools: Annotated[list[Annotated[str, AfterValidator(_tool)]], AfterValidator(_unique)]
    """Catalog tool names; the host refuses every other tool to this role's agents."""

    def entry_file(self) -> str:
        """The entry's file relative to the template directory (a module's ``.py`` file)."""
        if _SCRIPT_ENTRY.fullmatch(self.entry):
            return self.entry
        return self.entry.partition(":")[0].replace(".", "/") + ".py"


class TemplateDocument(_Model):
    """One version of a template, as ``template.yaml`` states it."""

    name: _Name
    version: Annotated[str, AfterValidator(_version)]
    summary: Annotated[str, Field(min_length=1, max_length=300)]
    roles: Annotated[list[Role], Field(min_length=1)]
    policy: dict[str, Any] = {}
    """Tenant policy defaults, validated by :func:`corral.supervisor.policy.load_policy`."""
    deprecated_at: _Instant | None = None
    sunset_at: _Instant | None = None
    security: bool = False
    """This release fixes a security issue (a patch release so marked may apply itself)."""
    changelog: str = ""

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            load_policy(value)
            canonicalize(value)
        except PolicyError as exc:
            raise PydanticCustomError("policy", "{problems}", {"problems": exc.problems}) from None
        except CanonicalizationError as exc:
            raise ValueError(f"not a JSON value: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TemplateDocument:
        problems: list[str] = []
        names = [role.name for role in self.roles]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"roles: role {name!r} is defined twice")
        if self.sunset_at is not None:
            if self.deprecated_at is None:
                problems.append(
                    "sunset_at: a version is deprecated before it sunsets; set deprecated_at too"
                )
            elif self.sunset_at <= self.deprecated_at:
                problems.append(
                    f"sunset_at: {format_time(self.sunset_at)} must be after deprecated_at "
                    f"{format_time(self.deprecated_at)}"
                )
        policy_roles = self.policy.get("roles") or {}
        for i, role in enumerate(self.roles):
            patterns = policy_roles.get(role.name)
            if patterns is None:
                continue
            for tool in role.tools:
                if not any(_matches(pattern, tool) for pattern in patterns):
                    problems.append(
                        f"roles[{i}].tools: {tool!r} is not allowed by policy.roles.{role.name} "
                        "(the supervisor would deny every call of it)"
                    )
        if problems:
            raise PydanticCustomError("consistency", "{problems}", {"problems": problems})
        return self

    # --------------------------------------------------------------------------- reading

    @property
    def semver(self) -> Version:
        return Version.parse(self.version)

    @cached_property
    def tenant_policy(self) -> TenantPolicy:
        """The policy defaults as the supervisor reads them."""
        return load_policy(self.policy)

    def role(self, name: str) -> Role:
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(name)

    def is_deprecated(self, at: datetime) -> bool:
        return self.deprecated_at is not None and at >= self.deprecated_at

    def is_sunset(self, at: datetime) -> bool:
        """At or after ``sunset_at``: the version can no longer be activated."""
        return self.sunset_at is not None and at >= self.sunset_at

    def referenced_files(self) -> list[str]:
        """Every file the document references, relative to its directory, sorted."""
        return sorted({role.entry_file() for role in self.roles})

    def file_digests(self, directory: Path) -> dict[str, str]:
        """``{relative path: "sha256:<hex>"}`` of every referenced file in ``directory``.

        Raises :class:`DocumentError` naming each role whose file is missing, unreadable, or
        outside ``directory`` (through a symbolic link).
        """
        base = directory.resolve()
        digests: dict[str, str] = {}
        problems: list[str] = []
        for i, role in enumerate(self.roles):
            relative = role.entry_file()
            if relative in digests:
                continue
            path = directory / relative
            try:
                if not path.resolve().is_relative_to(base):
                    raise OSError("it leads outside the template directory")
                data = path.read_bytes()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                problems.append(f"roles[{i}].entry: cannot read {relative}: {reason}")
                continue
            digests[relative] = "sha256:" + hashlib.sha256(data).hexdigest()
        if problems:
            raise DocumentError(problems, source=str(directory / DOCUMENT_FILE))
        return dict(sorted(digests.items()))

    def content_hash(self, directory: Path) -> str:
        """``sha256:<hex>`` of the RFC 8785 form of ``{"document", "files"}``: the validated
        document (every field, defaults included, times in one spelling) and
        :meth:`file_digests`."""
        body = {"document": self.model_dump(mode="json"), "files": self.file_digests(directory)}
        return "sha256:" + hashlib.sha256(canonicalize(body)).hexdigest()


def _matches(pattern: str, tool: str) -> bool:
    """A policy role pattern (``TOOLS.md``): an exact name, ``provider.*`` or ``*``."""
    if pattern == "*" or pattern == tool:
        return True
    return pattern.endswith(".*") and tool.split(".", 1)[0] == pattern[:-2]


# --- errors in words ---------------------------------------------------------------------------


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "template"


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "int_type": "an integer",
}


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors():
        loc, kind, ctx = error["loc"], error["type"], error.get("ctx") or {}
        where = _path(loc)
        if kind == "policy":
            problems += [p if p.startswith("policy") else f"policy.{p}" for p in ctx["problems"]]
        elif kind == "consistency":
            problems += ctx["problems"]
        elif kind == "value_error" and "error" in ctx:
            problems.append(f"{where}: {ctx['error']}")
        elif kind == "extra_forbidden":
            model = Role if loc[:1] == ("roles",) else TemplateDocument
            problems.append(
                f"{where}: unknown field; the fields here are {', '.join(model.model_fields)}"
            )
        elif kind == "missing":
            problems.append(f"{where}: is required")
        elif kind == "string_pattern_mismatch":
            problems.append(
                f"{where}: {error['input']!r} is not a name (lowercase letters, "
                "digits and '-', at most 64)"
            )
        elif kind in _EXPECTED:
            problems.append(f"{where}: must be {_EXPECTED[kind]}, got {_describe(error['input'])}")
        else:
            message = str(error["msg"])
            problems.append(f"{where}: {message[:1].lower()}{message[1:]}")
    return problems


# --- reading files -----------------------------------------------------------------------------

_Loader = strict_loader(timestamps=False)


def parse_document(data: Any, *, source: str | None = None) -> TemplateDocument:
    """Validate a parsed document (a mapping); :class:`DocumentError` names every problem."""
    if not isinstance(data, Mapping):
        raise DocumentError(
            [f"template: must be a mapping of fields, got {_describe(data)}"], source=source
        )
    try:
        return TemplateDocument.model_validate(dict(data))
    except ValidationError as exc:
        raise DocumentError(_problems(exc), source=source) from None


def load_document(path: Path) -> TemplateDocument:
    """Read and validate one ``template.yaml``."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DocumentError(
            [f"template: cannot read the file: {exc.strerror}"], source=str(path)
        ) from None
    except UnicodeDecodeError as exc:
        raise DocumentError(
            [f"template: not UTF-8 text ({exc.reason} at byte {exc.start})"], source=str(path)
        ) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise DocumentError(
            [f"template: malformed YAML: {where}{exc.problem}"], source=str(path)
        ) from None
    except yaml.YAMLError as exc:
        raise DocumentError([f"template: malformed YAML: {exc}"], source=str(path)) from None
    return parse_document(data, source=str(path))


@dataclass(frozen=True)
class Template:
    """A document loaded from its directory, with the content hash an activation pins."""

    document: TemplateDocument
    directory: Path
    content_hash: str

    @property
    def name(self) -> str:
        return self.document.name

    @property
    def version(self) -> Version:
        return self.document.semver

    @property
    def path(self) -> Path:
        return self.directory / DOCUMENT_FILE


def load_template(directory: Path) -> Template:
    """Load ``directory/template.yaml`` and hash it with the files it references."""
    document = load_document(directory / DOCUMENT_FILE)
    return Template(document, directory, document.content_hash(directory))
