"""A tenant policy's values: the field checks, the YAML reading and problems in words.

Split from :mod:`corral.supervisor.policy` so that the model there reads as the policy's
shape, while the details of what each field accepts (phone numbers, calendar keys, tool
patterns), how a YAML document is read (YAML 1.2 core-schema scalars, duplicate keys refused)
and how pydantic's errors become ``"<field path>: <what is wrong>"`` sit here. A field check
raises ``ValueError`` with words for a person; :func:`corral.supervisor.policy.load_policy`
turns them, and every other problem, into one ``PolicyError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import BaseModel, ValidationInfo

from corral.connectors import catalog
from corral.core.money import minor_unit_digits
from corral.core.strict_yaml import strict_loader

# --- field checks: each raises ValueError with words for a person ---------------------------

_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]\Z")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\Z")
_ID = re.compile(r"\S+\Z")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}\Z")
_PHONE = re.compile(r"[+(]?[0-9][0-9()\-. ]*\Z")
_CALENDLY_URI = re.compile(r"https?://[^/\s]+/event_types/[A-Za-z0-9-]{1,64}\Z")
_CALENDAR_PREFIXES = ("google_calendar:", "calendly:", "ghl:")
_NOT_ZONES = frozenset({"localtime", "posixrules"})  # files in TZPATH, not IANA zone names


def _zone_name(value: str) -> str:
    try:
        if value in _NOT_ZONES:
            raise ZoneInfoNotFoundError(value)
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {value!r}; use an IANA name such as America/Los_Angeles"
        ) from None
    return value


def _country(value: str) -> str:
    code = value.upper()
    if len(code) != 2 or code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown country {value!r}; use an ISO 3166 alpha-2 code such as US")
    return code


def _hhmm(value: str) -> str:
    if not _HHMM.match(value):
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
    return value


def _currency(value: str) -> str:
    try:
        if value != value.lower():
            raise ValueError
        minor_unit_digits(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a lowercase ISO 4217 currency code, e.g. usd") from None
    return value


def _phone_key(value: str, country: str | None) -> str | None:
    """E.164 for a phone number (national format read in ``country``), else ``None``.

    The same reading as ``corral.connectors._fields`` gives tool arguments (possible, not
    necessarily assigned, numbers), so a policy entry and a ``to`` argument normalize alike;
    only digits and ``+ ( ) - .`` and spaces are allowed first, as phonenumbers alone would
    also find a number inside ``twilio:+15550100001`` or ``call +15550100001``.
    """
    if not _PHONE.match(value):
        return None
    try:
        number = phonenumbers.parse(value, country)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _recipient(value: str, info: ValidationInfo) -> str:
    """The key an ``opted_out`` entry is compared by: E.164, a case-folded email, or exact id."""
    if value.startswith("ghl_contact:"):
        if not _ID.match(value.removeprefix("ghl_contact:")):
            raise ValueError(f"{value!r} needs a contact id without spaces after ghl_contact:")
        return value
    if "@" in value:
        if not _EMAIL.match(value):
            raise ValueError(f"{value!r} is not an email address")
        return value.casefold()
    if "country" not in info.data and not value.startswith("+"):
        return value  # the country is itself refused; that problem is reported instead
    key = _phone_key(value, info.data.get("country"))
    if key is None:
        raise ValueError(
            f"{value!r} is not a phone number (E.164, or national format in the policy's "
            "country), an email address or ghl_contact:<id>"
        )
    return key


def _calendar_key(value: str) -> str:
    prefix = next((p for p in _CALENDAR_PREFIXES if value.startswith(p)), None)
    if prefix is None:
        raise ValueError(
            f"{value!r} is not a calendar key: google_calendar:<id>, calendly:<event type URI> "
            "or ghl:<calendar_id>"
        )
    rest = value.removeprefix(prefix)
    if not _ID.match(rest):
        raise ValueError(f"{value!r} needs an id without spaces after {prefix}")
    if prefix == "calendly:" and not _CALENDLY_URI.match(rest):
        raise ValueError(
            f"{value!r} needs the event type URI, e.g. "
            "calendly:https://api.calendly.com/event_types/ET1"
        )
    return value


@cache
def _tools() -> tuple[frozenset[str], frozenset[str]]:
    """The catalog's tool names and provider names (computed once: the catalog is fixed)."""
    names = frozenset(catalog())
    return names, frozenset(name.split(".", 1)[0] for name in names)


def _pattern(value: str) -> str:
    names, providers = _tools()
    if value == "*" or value in names:
        return value
    if value.endswith(".*") and value.removesuffix(".*") in providers:
        return value
    raise ValueError(
        f"pattern {value!r} is not a catalog tool name, <provider>.* or *"
        f" (providers: {', '.join(sorted(providers))})"
    )


def _role_defined(role: str, info: ValidationInfo) -> str:
    roles = info.data.get("roles")
    if roles is not None and role not in roles:  # roles absent: its own problem is reported
        defined = ", ".join(sorted(roles)) or "none"
        raise ValueError(f"role {role!r} is not defined in roles (defined: {defined})")
    return role


# --- reading YAML -----------------------------------------------------------------------------

_PolicyLoader = strict_loader()


# --- pydantic errors in words -----------------------------------------------------------------

_MAPPING_FIELDS = frozenset({"calendars", "roles", "agents"})


def _problem(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    """One of pydantic's errors from validating ``root`` as ``"<field path>: <message>"``."""
    loc: tuple[int | str, ...] = error["loc"]
    if error["type"] == "invalid_key":  # a YAML key such as 1 or true where a name belongs
        return f"{_path(loc[:-1])}: field name {_describe(loc[-1])} is not a string"
    return f"{_path(loc)}: {_message(error, loc, root)}"


def _path(loc: tuple[int | str, ...]) -> str:
    """``refunds.daily_cap.amount``, ``opted_out[2]``, ``roles.receptionist[0]``."""
    text = ""
    for i, part in enumerate(loc):
        if part == "[key]":
            text += " (the name)"
        elif isinstance(part, int) and not (i == 1 and loc[0] in _MAPPING_FIELDS):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "policy"


def _message(error: Mapping[str, Any], loc: tuple[int | str, ...], root: type[BaseModel]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        known = f"; the fields here are {', '.join(model.model_fields)}" if model else ""
        return f"unknown field{known}"
    if kind == "missing":
        return "is required"
    if kind == "greater_than_equal":
        floor = ctx.get("ge")
        if floor == 0:
            return f"must not be negative, got {_describe(value)}"
        return f"must be at least {floor}, got {_describe(value)}"
    expected = {
        "int_type": "an integer",
        "string_type": "a string",
        "dict_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "list_type": "a list",
        "tuple_type": "a list",
    }.get(kind)
    if expected:
        return f"must be {expected}, got {_describe(value)}"
    message = str(error["msg"])
    return message[:1].lower() + message[1:]


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose fields sit at ``loc`` in ``root`` (to list them after an unknown field)."""
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        inner = getattr(field.annotation, "__args__", (field.annotation,))
        found = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if not found:
            return None
        model = found[0]
    return model


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
