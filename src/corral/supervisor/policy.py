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

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, NamedTuple
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from corral.core.canonical import loads_strict
from corral.core.errors import CanonicalizationError, CorralError
from corral.core.money import Money
from corral.supervisor._policy_time import _aware, _inside, _quiet_end
from corral.supervisor._policy_values import (
    _CALENDAR_PREFIXES,
    _E164,
    _calendar_key,
    _country,
    _currency,
    _describe,
    _hhmm,
    _pattern,
    _phone_key,
    _PolicyLoader,
    _problem,
    _recipient,
    _role_defined,
    _tools,
    _zone_name,
)

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


# --- the one field check that needs RuleId ----------------------------------------------------

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


# --- loading ----------------------------------------------------------------------------------


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
            raise PolicyError([_problem(error, TenantPolicy) for error in exc.errors()]) from None
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
