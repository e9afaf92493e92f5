"""A tenant's policy (``TOOLS.md``, "Tenant policy (version 1)"), loaded once, read on every call.

>>> from datetime import datetime, timezone
>>> policy = load_policy('''
... timezone: America/Los_Angeles
... quiet_hours: {start: 21:00, end: 08:00}
... opted_out: ["(415) 555-0100", Pat@Example.com]
... calendars: {dr-lee: ["google_calendar:lee@brightsmile.example", "ghl:cal-7"]}
... roles: {receptionist: ["google_calendar.*", "twilio.send_sms"]}
... agents: {receptionist-1: receptionist}
... ''')
>>> policy.opted_out
('+14155550100', 'pat@example.com')
>>> policy.is_opted_out("PAT@example.com"), policy.is_opted_out("+14155550199")
(True, False)
>>> policy.in_quiet_hours(datetime(2026, 3, 4, 6, 0, tzinfo=timezone.utc))  # 22:00 in LA
datetime.datetime(2026, 3, 4, 16, 0, tzinfo=datetime.timezone.utc)
>>> policy.in_quiet_hours(datetime(2026, 3, 4, 17, 0, tzinfo=timezone.utc)) is None
True
>>> policy.calendar_group("ghl:cal-7"), policy.calendar_group("ghl:cal-8")
('dr-lee', 'ghl:cal-8')
>>> policy.role_allows("receptionist-1", "stripe.create_refund"), policy.role_allows("x", "y")
(False, None)
>>> try:
...     load_policy('{"quiet_hours": {"start": "09:00", "end": "09:00"}, "refunds": {"daily_cap":'
...                 ' {"amont": 5, "currency": "usd"}}, "observe_only": ["quiet"]}')
... except PolicyError as exc:
...     for problem in exc.problems:
...         print(problem)  # doctest: +ELLIPSIS
quiet_hours: start and end are both 09:00; quiet hours need start != end (null disables them)
refunds.daily_cap.amount: is required
refunds.daily_cap.amont: unknown field; the fields here are amount, currency
observe_only[0]: unknown rule id 'quiet'; the rule ids are role, opted_out, quiet_hours, ...

Every refusal is a :class:`PolicyError` listing *all* problems as ``"<field path>: <what is
wrong>"``, so a person fixes a policy in one round instead of one error at a time.

The classifier calls the helpers on every tool call, so everything they need (the zone, the
quiet window, the opted-out keys, the calendar groups, each agent's allowed tools) is computed
once when the policy is validated. A policy is frozen; build a changed one with
:func:`load_policy`, not ``model_copy(update=...)``, which would keep the old precomputed state.

YAML is read as ``yaml.safe_load`` does, with two changes that keep a natural document from
meaning something else: a duplicate key is refused (as in JSON), and plain scalars follow YAML
1.2's core schema, so ``21:00`` stays a string (YAML 1.1 reads it as the base-60 integer 1260)
and ``NO`` (Norway) stays a string (YAML 1.1 reads it as ``false``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from corral.connectors import catalog
from corral.core.canonical import loads_strict
from corral.core.errors import CanonicalizationError, CorralError
from corral.core.money import Money, minor_unit_digits

__all__ = [
    "MessageLimits",
    "MoneyLimit",
    "PolicyError",
    "QuietHours",
    "RefundLimits",
    "RuleId",
    "TenantPolicy",
    "load_policy",
]


class RuleId(StrEnum):
    """The supervisor's rule ids (``SUPERVISOR.md``), the words ``observe_only`` may list."""

    ROLE = "role"
    OPTED_OUT = "opted_out"
    QUIET_HOURS = "quiet_hours"
    DUPLICATE_MESSAGE = "duplicate_message"
    RECIPIENT_DAILY_MAX = "recipient_daily_max"
    SLOT_CONFLICT = "slot_conflict"
    DUPLICATE_CANCEL = "duplicate_cancel"
    DUPLICATE_REFUND = "duplicate_refund"
    REFUND_ABOVE_THRESHOLD = "refund_above_threshold"
    REFUND_DAILY_CAP = "refund_daily_cap"
    DUPLICATE_CHARGE = "duplicate_charge"
    DUPLICATE_INVOICE = "duplicate_invoice"
    UNKNOWN_OUTCOME = "unknown_outcome"
    RETRY_STORM = "retry_storm"
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"


class PolicyError(CorralError, ValueError):
    """A tenant policy that cannot be used; ``problems`` holds each ``"<path>: <message>"``.

    ``source`` names the file the policy came from, when it came from one.
    """

    def __init__(self, problems: Sequence[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" {source}" if source else ""
        if len(self.problems) == 1:
            text = f"invalid tenant policy{where}: {self.problems[0]}"
        else:
            text = f"invalid tenant policy{where} ({len(self.problems)} problems): "
            text += "; ".join(self.problems)
        super().__init__(text)

    def diagnostics(self) -> str:
        """One problem a line, under a heading that names the source."""
        where = f" {self.source}" if self.source else ""
        return "\n".join([f"invalid tenant policy{where}:", *(f"  {p}" for p in self.problems)])


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


_RULE_IDS = frozenset(rule.value for rule in RuleId)


def _rule_id(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a rule id (a string), got {_describe(value)}")
    if value not in _RULE_IDS:
        raise ValueError(
            f"unknown rule id {value!r}; the rule ids are {', '.join(r.value for r in RuleId)}"
        )
    return value


# --- the model --------------------------------------------------------------------------------

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class QuietHours(BaseModel):
    """``[start, end)`` in the tenant's local wall time; ``start > end`` wraps midnight."""

    model_config = _FROZEN

    start: Annotated[str, AfterValidator(_hhmm)]
    end: Annotated[str, AfterValidator(_hhmm)]

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError(
                f"start and end are both {self.start}; quiet hours need start != end"
                " (null disables them)"
            )
        return self


class MoneyLimit(BaseModel):
    """An amount in a currency's minor unit; it limits refunds in that currency only."""

    model_config = _FROZEN

    amount: Annotated[StrictInt, Field(ge=0)]
    currency: Annotated[str, AfterValidator(_currency)]

    @property
    def money(self) -> Money:
        return Money(self.amount, self.currency)


class RefundLimits(BaseModel):
    """``None`` (absent or ``null``) means no limit."""

    model_config = _FROZEN

    daily_cap: MoneyLimit | None = None
    escalate_above: MoneyLimit | None = None


class MessageLimits(BaseModel):
    model_config = _FROZEN

    dedupe_window_s: Annotated[StrictInt, Field(ge=0)] = 86400
    per_recipient_daily_max: Annotated[StrictInt, Field(ge=1)] = 3


class _Access(NamedTuple):
    """What a role's patterns allow, in the form a lookup needs."""

    everything: bool
    tools: frozenset[str]
    providers: frozenset[str]


class _Index(NamedTuple):
    """What the helpers look up, computed once per policy."""

    zone: ZoneInfo
    window: tuple[time, time] | None
    opted_out: frozenset[str]
    group_of: dict[str, str]
    access: dict[str, _Access]
    observed: frozenset[str]


class TenantPolicy(BaseModel):
    """One tenant's policy (``TOOLS.md``); every field has its documented default.

    Validate through :func:`load_policy`, which turns pydantic's errors into a
    :class:`PolicyError`; ``TenantPolicy.model_validate`` raises pydantic's ``ValidationError``.
    """

    model_config = _FROZEN

    timezone: Annotated[str, AfterValidator(_zone_name)] = "UTC"
    country: Annotated[str, AfterValidator(_country)] = "US"
    quiet_hours: QuietHours | None = QuietHours(start="21:00", end="08:00")
    opted_out: tuple[Annotated[str, AfterValidator(_recipient)], ...] = ()
    refunds: RefundLimits = RefundLimits()
    messages: MessageLimits = MessageLimits()
    calendars: dict[str, tuple[Annotated[str, AfterValidator(_calendar_key)], ...]] = {}
    roles: dict[str, tuple[Annotated[str, AfterValidator(_pattern)], ...]] = {}
    agents: dict[str, Annotated[str, AfterValidator(_role_defined)]] = {}
    observe_only: tuple[Annotated[RuleId, BeforeValidator(_rule_id)], ...] = ()

    @field_validator("opted_out")
    @classmethod
    def _dedupe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))

    @field_validator("calendars")
    @classmethod
    def _one_group_per_key(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        # A key in two groups would make "the same resource" depend on which group we read
        # first; a group named like a key would merge that group with the ungrouped key.
        problems: list[str] = []
        first_group: dict[str, str] = {}
        for group, keys in value.items():
            if group.startswith(_CALENDAR_PREFIXES):
                problems.append(f"group name {group!r} looks like a calendar key; rename it")
            for key in keys:
                other = first_group.setdefault(key, group)
                if other != group:
                    problems.append(f"{key!r} is in two groups, {other!r} and {group!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._index  # noqa: B018 (computed now: no call pays for it, and no call can fail on it)

    @cached_property
    def _index(self) -> _Index:
        # A cached_property sits in the instance __dict__, so reading it is a plain attribute
        # lookup; a pydantic private attribute goes through __getattr__ (about 1 µs a read).
        quiet = self.quiet_hours
        access = {
            role: _Access(
                everything="*" in patterns,
                tools=frozenset(p for p in patterns if not p.endswith("*")),
                providers=frozenset(p.removesuffix(".*") for p in patterns if p.endswith(".*")),
            )
            for role, patterns in self.roles.items()
        }
        return _Index(
            zone=ZoneInfo(self.timezone),
            window=None
            if quiet is None
            else (time.fromisoformat(quiet.start), time.fromisoformat(quiet.end)),
            opted_out=frozenset(self.opted_out),
            group_of={key: group for group, keys in self.calendars.items() for key in keys},
            access={agent: access[role] for agent, role in self.agents.items()},
            observed=frozenset(self.observe_only),
        )

    # --- helpers for the classifier ----------------------------------------------------------

    @property
    def zone(self) -> ZoneInfo:
        """The tenant's time zone, where quiet hours and local days are read."""
        return self._index.zone

    def local_day(self, at: datetime) -> date:
        """The calendar day of ``at`` in the tenant's zone (``SUPERVISOR.md``: local day)."""
        return _aware(at).astimezone(self._index.zone).date()

    def in_quiet_hours(self, at: datetime) -> datetime | None:
        """When ``at``'s local wall time is in ``[start, end)``: the end of that quiet period.

        Returns ``None`` outside quiet hours (or when ``quiet_hours`` is ``null``). The end is
        the first instant after ``at`` at which the rule stops firing, as an aware datetime in
        UTC (two datetimes in the same ``ZoneInfo`` compare by wall time, ignoring ``fold``:
        UTC keeps comparisons and subtraction right across a DST change). That instant is the
        next local ``end`` wall time after ``at``; on a DST day:

        - ``end`` does not exist (the clocks jump over it, e.g. 02:30 on 2026-03-08 in
          America/Los_Angeles): the instant of the jump (03:00 PDT, 10:00Z), when the wall
          clock first reads past ``end``.
        - ``end`` happens twice (the repeated hour, e.g. 01:30 on 2026-11-01 there): its first
          occurrence after ``at``. Before the repeat that is the daylight one (01:30 PDT,
          08:30Z); the wall times of the repeated hour inside the window are quiet again
          (01:00-01:30 PST), and their end is the second occurrence (01:30 PST, 09:30Z).
        - Two windows where the wall clock itself leaves or keeps the window without passing
          ``end``: a window that starts in the repeated hour ends when the clocks go back out
          of it (``[01:30, 06:00)`` at 01:45 PDT ends at 01:00 PST, 09:00Z), and a window that
          the spring jump lands in again continues to the next day's ``end`` (``[03:00,
          02:59)`` is quiet from 03:00 PST on 2026-03-07 to 02:59 PDT on 2026-03-09).

        So the end is at most 25 h after ``at``, except when all the time outside the window
        fits in a spring jump (usually an hour) that skips it: then at most 49 h.

        Raises ``ValueError`` for a naive ``at``.
        """
        index = self._index
        window = index.window
        if window is None:
            return None
        local = _aware(at).astimezone(index.zone)
        if not _inside(local.time(), window):
            return None
        return _quiet_end(at.astimezone(UTC), local, window, index.zone)

    def calendar_group(self, key: str) -> str:
        """The resource a calendar key books: its group in ``calendars``, else the key itself."""
        return self._index.group_of.get(key, key)

    def is_opted_out(self, recipient: str) -> bool:
        """Whether a message recipient is in ``opted_out``.

        E.164 numbers and ``ghl_contact:<id>`` compare exactly, emails case-insensitively; a
        number in another form (national format, spaces) is normalized with ``country`` first.
        """
        opted_out = self._index.opted_out
        if recipient in opted_out:
            return True
        if "@" in recipient:
            return recipient.casefold() in opted_out
        if not opted_out or _E164.match(recipient) or recipient.startswith("ghl_contact:"):
            return False  # already in the form entries are kept in
        key = _phone_key(recipient, self.country)
        return key is not None and key in opted_out

    def role_allows(self, agent: str, tool: str) -> bool | None:
        """Whether ``agent``'s role allows ``tool``; ``None`` when the agent has no role.

        An agent without a role may call every tool (``TOOLS.md``), which the ``None`` lets the
        classifier tell apart from a role that allows this tool.
        """
        access = self._index.access.get(agent)
        if access is None:
            return None
        if access.everything or tool in access.tools:
            return True
        # ``provider.*`` is "every tool of that provider" (TOOLS.md): catalog tools only, so a
        # made-up ``stripe.create_charge`` is outside a ``stripe.*`` role too.
        provider, dot, _ = tool.partition(".")
        return bool(dot) and provider in access.providers and tool in _tools()[0]

    def observed(self, rule_id: str) -> bool:
        """Whether ``rule_id`` is only observed (reported, not enforced)."""
        return rule_id in self._index.observed


def _quiet_end(
    at: datetime, local: datetime, window: tuple[time, time], zone: ZoneInfo
) -> datetime:
    """The first instant after ``at`` (UTC; ``local`` is it in ``zone``) outside ``window``.

    A quiet period can only end where the wall clock reaches ``end`` or jumps (a DST change).
    Take the first real occurrence of ``end`` after ``at`` (every day has one, bar a gap day);
    if the UTC offset changed on the way, the jump came first, and ends the period if it
    lands outside the window. Assumes one offset change at most within two days.
    """
    first = next(
        instant
        for days in range(3)
        for instant in _occurrences(local.date() + timedelta(days), window[1], zone)
        if instant > at
    )
    before = local.utcoffset()
    if first.astimezone(zone).utcoffset() != before:
        jump = _transition(math.floor(at.timestamp()), int(first.timestamp()), zone)
        if jump < first and not _inside(jump.astimezone(zone).time(), window):
            return jump
    return first


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"a time must be timezone-aware, got the naive {at.isoformat()}")
    return at


def _inside(wall: time, window: tuple[time, time]) -> bool:
    start, end = window
    return start <= wall < end if start < end else (wall >= start or wall < end)


def _occurrences(day: date, wall: time, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants at which the clocks of ``zone`` read ``wall`` on ``day``, in order.

    ``zoneinfo`` resolves ``fold=0`` with the offset before a transition and ``fold=1`` with the
    one after: equal offsets mean one occurrence, a drop (clocks back) two, a rise none (a gap).
    """
    first = datetime.combine(day, wall, tzinfo=zone)
    second = first.replace(fold=1)
    before, after = first.utcoffset(), second.utcoffset()
    if before == after:
        return [first.astimezone(UTC)]
    if before is not None and after is not None and after < before:
        return [first.astimezone(UTC), second.astimezone(UTC)]
    return []


def _transition(lo: int, hi: int, zone: ZoneInfo) -> datetime:
    """The first whole second in ``(lo, hi]`` whose UTC offset differs from ``lo``'s.

    Requires one transition in the range (tzdata's transitions fall on whole seconds).
    """

    def offset(ts: int) -> timedelta | None:
        return datetime.fromtimestamp(ts, zone).utcoffset()

    before = offset(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if offset(mid) == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


# --- loading ----------------------------------------------------------------------------------

_Resolvers = dict[str | None, list[tuple[str, re.Pattern[str]]]]


def _core_schema_resolvers() -> _Resolvers:
    """SafeLoader's implicit resolvers, with YAML 1.2 core-schema booleans and numbers.

    YAML 1.1 (PyYAML) reads ``21:00`` as the base-60 integer 1260, ``NO`` and ``on`` as
    booleans and ``010`` as octal 8: in a policy these are quiet hours, a country and an id.
    A number with a leading zero stays a string here (neither reading is safe to guess).
    """
    core = {
        "bool": (r"true|True|TRUE|false|False|FALSE", "tTfF"),
        "int": (r"[-+]?(?:0|[1-9][0-9]*)", "-+0123456789"),
        "float": (
            r"[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
            "-+0123456789.",
        ),
    }
    replaced = {f"tag:yaml.org,2002:{name}" for name in core}
    resolvers: _Resolvers = {
        first: [(tag, rx) for tag, rx in entries if tag not in replaced]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for name, (pattern, firsts) in core.items():
        regex = re.compile(f"^(?:{pattern})$")
        for first in firsts:
            resolvers.setdefault(first, []).append((f"tag:yaml.org,2002:{name}", regex))
    return resolvers


class _PolicyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with duplicate keys refused and YAML 1.2 core-schema scalars."""

    yaml_implicit_resolvers = _core_schema_resolvers()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def _parse(text: str, *, json_only: bool) -> Any:
    """JSON when the text is an object (or the file is ``.json``), YAML otherwise."""
    if json_only or text.lstrip().startswith("{"):
        try:
            return loads_strict(text)
        except CanonicalizationError as exc:
            raise PolicyError([f"policy: {exc}"]) from None
    try:
        return yaml.load(text, Loader=_PolicyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise PolicyError([f"policy: malformed YAML: {where}{exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([f"policy: malformed YAML: {exc}"]) from None


def load_policy(source: str | bytes | Mapping[str, Any] | Path) -> TenantPolicy:
    """Validate a tenant policy from JSON or YAML text, a mapping, or a file.

    ``str`` and ``bytes`` (UTF-8) are the document's text, never a file name: pass a
    :class:`~pathlib.Path` to read a file. Text whose first non-blank character is ``{`` (and
    every ``.json`` file) is JSON, with duplicate keys refused; anything else is YAML. Raises
    :class:`PolicyError` naming every problem at once.
    """
    name: str | None = None
    try:
        if isinstance(source, Path):
            name = str(source)
            try:
                raw = source.read_bytes()
            except OSError as exc:
                raise PolicyError([f"policy: cannot read the file: {exc.strerror}"]) from None
            data = _parse(_text(raw), json_only=Path(name).suffix.lower() == ".json")
        elif isinstance(source, bytes | str):
            data = _parse(_text(source), json_only=False)
        else:
            data = source
        if not isinstance(data, Mapping):
            raise PolicyError([f"policy: must be a mapping of fields, got {_describe(data)}"])
        try:
            return TenantPolicy.model_validate(dict(data))
        except ValidationError as exc:
            raise PolicyError([_problem(error) for error in exc.errors()]) from None
    except PolicyError as exc:
        if name is None:
            raise
        raise PolicyError(exc.problems, source=name) from None


def _text(source: str | bytes) -> str:
    if isinstance(source, str):
        return source
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PolicyError([f"policy: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None


# --- pydantic errors in words -----------------------------------------------------------------

_MAPPING_FIELDS = frozenset({"calendars", "roles", "agents"})


def _problem(error: Mapping[str, Any]) -> str:
    loc: tuple[int | str, ...] = error["loc"]
    if error["type"] == "invalid_key":  # a YAML key such as 1 or true where a name belongs
        return f"{_path(loc[:-1])}: field name {_describe(loc[-1])} is not a string"
    return f"{_path(loc)}: {_message(error, loc)}"


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


def _message(error: Mapping[str, Any], loc: tuple[int | str, ...]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
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


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose fields sit at ``loc`` (to list them after an unknown field)."""
    model: type[BaseModel] = TenantPolicy
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
