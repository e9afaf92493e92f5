"""Plain-language prose for audit entries: what a small-business owner reads on the dashboard.

Rendering is a pure function of the entries, their personal payloads, a :class:`RenderContext`
(the tenant's time zone, locale and country) and :data:`RENDERER_VERSION`: no wall clock, no
randomness, no machine locale or ``TZ``. Dates, times and money go through babel with an explicit
locale and time zone, phone numbers through phonenumbers. Callers record ``RENDERER_VERSION``
with what they render, since wording (and the pinned babel/CLDR data) may change between versions.

- :func:`render_entry` gives one line per entry: ``<local time> — <sentence>``.
- :func:`render_timeline` tells stories, because the owner reads stories, not events: an
  ``action.requested`` and the ``action.verdict``, ``operator.decision``, ``action.executed`` and
  ``action.failed`` entries that follow it in the list with the same tenant and ``call_id`` become
  one :class:`Line` at the request's time; a later part names its own time when that differs.
  Lines keep the list's (log) order; nothing is sorted.
- Personal payloads: pass the verified :class:`~corral.audit.entries.PersonalPayload`, ``None``
  (render without personal details) or :data:`ERASED` (the payload was erased on request; the
  prose says so neutrally). A payload that does not match its entry's commitment raises
  :class:`ProseError`, so unverified personal data is never shown. Nothing else raises: unknown
  kinds and data the renderer cannot describe give a generic sentence.
- Text from entries is untrusted: control, format (bidi) and line-separator characters are
  removed, long values shortened with "…", message bodies quoted (“…”, «…»).
- Wording lives in one table per language (``WORDING``). A template may have variants, tried in
  order; the first whose placeholders are all known facts is used, so a missing or erased fact
  drops out of the sentence instead of being invented.

>>> from datetime import datetime, timezone
>>> from corral.audit.entries import ActionRequested, ActionRequestedData, Actor, seal
>>> entry, personal = seal(ActionRequested(id="e1", tenant="brightsmile",
...     at=datetime(2026, 3, 3, 17, 14, tzinfo=timezone.utc),
...     actor=Actor(kind="agent", id="receptionist-1", role="receptionist"),
...     data=ActionRequestedData(call_id="c1", tool="twilio.send_sms")),
...     {"args": {"to": "+15550101234", "body": "See you at 10!"}}, salt=bytes(32))
>>> ctx = RenderContext(timezone="America/Los_Angeles", locale="en", country="US")
>>> when, sentence = render_entry(entry, personal, ctx).split(" — ")
>>> when == "Tue, Mar 3, 9:14\N{NARROW NO-BREAK SPACE}AM"  # CLDR's space before AM
True
>>> print(sentence)  # doctest: +NORMALIZE_WHITESPACE
The receptionist agent (receptionist-1) asked to text (555) 010-1234: “See you at 10!” [call c1]
>>> es = RenderContext("America/Los_Angeles", "es")
>>> print(render_entry(entry, ERASED, es))  # doctest: +NORMALIZE_WHITESPACE
mar, 3 de marzo, 9:14 — El agente receptionist (receptionist-1) pidió enviar un SMS
[datos borrados a petición]. [acción c1]
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation, localcontext
from enum import Enum
from functools import lru_cache
from typing import Any, Final, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_interval, format_skeleton, format_time
from babel.lists import format_list
from babel.numbers import format_currency, format_decimal
from pydantic import ValidationError

from corral.audit._wording import EN, WORDING, Table
from corral.audit.entries import (
    ActionExecuted,
    ActionFailed,
    ActionRequested,
    ActionVerdict,
    ActionVerdictData,
    Actor,
    CredentialConnected,
    CredentialRevoked,
    CredentialRotated,
    Decision,
    DelegationMinted,
    Entry,
    OperatorDecision,
    PersonalPayload,
    SandboxStarted,
    SandboxStopped,
    TemplateActivated,
    TemplateNotice,
    UnknownEntry,
    Verdict,
)
from corral.core.clock import parse_time
from corral.core.errors import AuditError
from corral.core.money import Money

__all__ = [
    "ERASED",
    "RENDERER_VERSION",
    "Erased",
    "Line",
    "Personal",
    "ProseError",
    "RenderContext",
    "render_entry",
    "render_timeline",
]

#: Recorded with rendered text: same entries + same version -> byte-identical prose.
RENDERER_VERSION: Final = "2"  # 2: template.notice entries are told, no longer "unknown"


class ProseError(AuditError, ValueError):
    """A render context that cannot be used, or a personal payload that does not match its entry."""

    def __init__(self, message: str, *, entry_id: str | None = None) -> None:
        super().__init__(message)
        self.entry_id = entry_id


class Erased(Enum):
    """Sentinel: the entry commits to a personal payload that was erased on request."""

    ERASED = "erased"


ERASED: Final = Erased.ERASED
Personal: TypeAlias = PersonalPayload | Erased | None


@dataclass(frozen=True, slots=True)
class RenderContext:
    """How to speak to one tenant: IANA time zone, babel locale (``en``, ``es``, ``es_MX``...),
    the ISO country whose phone numbers are shown in national format, and whether dates say the
    year. Raises :class:`ProseError` for a value it cannot use."""

    timezone: str = "UTC"
    locale: str = "en"
    country: str = "US"
    with_year: bool = False

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ProseError(f"unknown time zone: {self.timezone!r}") from exc
        try:
            language = _babel(self.locale).language
        except (UnknownLocaleError, ValueError) as exc:
            raise ProseError(f"unknown locale: {self.locale!r}") from exc
        if language not in WORDING:
            raise ProseError(f"no wording for {self.locale!r}; languages: {sorted(WORDING)}")
        if self.country not in phonenumbers.SUPPORTED_REGIONS:
            raise ProseError(f"unknown country code (ISO 3166 alpha-2): {self.country!r}")

    @classmethod
    def from_policy(
        cls, policy: Mapping[str, Any], *, locale: str = "en", with_year: bool = False
    ) -> RenderContext:
        """From a tenant policy (TOOLS.md: ``timezone`` default UTC, ``country`` default US)."""
        return cls(
            timezone=str(policy.get("timezone") or "UTC"),
            locale=locale,
            country=str(policy.get("country") or "US"),
            with_year=with_year,
        )


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the owner's timeline: a single entry, or a whole tool call's story."""

    at: datetime | None  #: the (first) entry's instant; None if an unknown entry has none
    when: str  #: ``at`` in the tenant's zone and locale
    sentence: str
    text: str  #: ``when — sentence``
    entry_ids: tuple[str, ...]
    call_id: str | None = None


def render_entry(entry: Entry, personal: Personal, ctx: RenderContext) -> str:
    """One line for one entry. Raises :class:`ProseError` only for a mismatched payload."""
    args, erased = _verify(entry, personal)
    return _Voice(ctx).line(_Slot(entry, args, erased)).text


def render_timeline(items: Iterable[tuple[Entry, Personal]], ctx: RenderContext) -> list[Line]:
    """Lines for (entry, payload) pairs in log order, each call's entries told as one story.

    Raises :class:`ProseError` only for a payload that does not match its entry.
    """
    slots: list[_Slot] = []
    calls: dict[tuple[str, str], _Slot] = {}
    for entry, personal in items:
        args, erased = _verify(entry, personal)
        if isinstance(entry, _CallEntry):
            key = (entry.tenant, entry.data.call_id)
            if isinstance(entry, ActionRequested):
                calls[key] = _Slot(entry, args, erased)
                slots.append(calls[key])
                continue
            if key in calls:
                calls[key].parts.append((entry, erased))
                continue
        slots.append(_Slot(entry, args, erased))
    voice = _Voice(ctx)
    return [voice.line(slot) for slot in slots]


# ------------------------------------------------------------------------------ internals

_CallEntry: TypeAlias = (
    ActionRequested | ActionVerdict | ActionExecuted | ActionFailed | OperatorDecision
)
_DROP = frozenset({"Cf", "Cs"})  # format (bidi, zero-width) and lone surrogates: removed
_BLANK = frozenset({"Cc", "Zl", "Zp"})  # controls and line breaks: become spaces
_TERMINAL = ".!?…"
_PROVIDERS = {
    "twilio": "Twilio",
    "ghl": "GoHighLevel",
    "google_calendar": "Google Calendar",
    "calendly": "Calendly",
    "stripe": "Stripe",
    "quickbooks": "QuickBooks Online",
}


@dataclass
class _Slot:
    entry: Entry
    args: dict[str, Any]
    erased: bool
    parts: list[tuple[_CallEntry, bool]] = field(default_factory=list)


def _verify(entry: Entry, personal: Personal) -> tuple[dict[str, Any], bool]:
    """Check the payload against the entry's commitment; return (personal args, erased)."""
    commitment = entry.raw.get("personal") if isinstance(entry, UnknownEntry) else entry.personal
    if personal is None or isinstance(personal, Erased):
        return {}, personal is ERASED and commitment is not None
    entry_id = _entry_id(entry)
    try:
        ok = personal.matches(commitment if isinstance(commitment, str) else None)
    except ValueError as exc:  # payload data that is not JSON cannot match anything
        raise ProseError(f"personal payload for entry {entry_id!r} is not JSON: {exc}") from exc
    if not ok:
        raise ProseError(
            f"personal payload does not match the commitment of entry {entry_id!r}; "
            "refusing to render unverified personal data",
            entry_id=entry_id,
        )
    args = personal.data.get("args")
    return (dict(args) if isinstance(args, dict) else {}), False


def _entry_id(entry: Entry) -> str:
    found = entry.raw.get("id") if isinstance(entry, UnknownEntry) else entry.id
    return found if isinstance(found, str) else ""


@lru_cache(maxsize=32)
def _babel(locale: str) -> Locale:
    return Locale.parse(locale.replace("-", "_"))


@lru_cache(maxsize=1024)
def _fields(template: str) -> frozenset[str]:
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


def _clean(value: str, limit: int = 80) -> str:
    """Untrusted text made safe to interpolate: one line, no control or bidi characters."""
    kept = "".join(
        " " if cat in _BLANK else ch
        for ch in value
        if (cat := unicodedata.category(ch)) not in _DROP
    )
    text = " ".join(kept.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _dedupe(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _total(lines: object) -> Decimal | None:
    """The exact sum of invoice lines' decimal ``amount`` strings, or None if any is odd."""
    if not isinstance(lines, list) or not lines:
        return None
    total = Decimal(0)
    for line in lines:
        amount = line.get("amount") if isinstance(line, dict) else None
        if not isinstance(amount, str | int) or isinstance(amount, bool):
            return None
        try:
            value = Decimal(amount)
        except InvalidOperation:
            return None
        exponent = value.as_tuple().exponent
        if not isinstance(exponent, int) or exponent < -6 or abs(value.adjusted()) > 15:
            return None
        total += value
    return total


class _Voice:
    """A render context bound to its zone, babel locale and wording table."""

    def __init__(self, ctx: RenderContext) -> None:
        self.ctx = ctx
        self.zone = ZoneInfo(ctx.timezone)
        self.locale = _babel(ctx.locale)
        self.words: Table = WORDING[self.locale.language]

    # -------------------------------------------------------------------- wording
    def pick(self, key: str, values: Mapping[str, str]) -> str | None:
        found = self.words.get(key, ())
        for template in (found,) if isinstance(found, str) else found:
            if _fields(template) <= values.keys():
                return template.format_map(values)
        return None

    def say(self, key: str, **values: str) -> str:
        text = self.pick(key, values)
        if text is None:  # every key ends with a variant that needs no optional fact
            raise KeyError(f"no wording {key!r} for {sorted(values)}")
        return text

    def quote(self, value: str, limit: int = 200) -> str:
        return self.say("quote", text=_clean(value, limit))

    def listing(self, items: Sequence[str], cap: int = 6) -> str:
        shown = list(items)
        if len(shown) > cap:
            more = format_decimal(len(shown) - cap + 1, locale=self.locale)
            shown = [*shown[: cap - 1], self.say("more", count=more)]
        return format_list(shown, locale=self.locale)

    def finish(self, sentence: str) -> str:
        """End with a period unless it already ends a sentence (en: also inside “…”)."""
        quotes = str(self.words["stop.quotes"])
        tail = sentence.rstrip(quotes) if quotes else sentence
        return sentence if tail.endswith(tuple(_TERMINAL)) else sentence + "."

    # ---------------------------------------------------------------------- times
    def local(self, when: datetime | None) -> datetime | None:
        try:
            return None if when is None else when.astimezone(self.zone)
        except (OverflowError, ValueError):  # at the edges of datetime's range
            return None

    def clock(self, local: datetime) -> str:
        text = format_time(local, "short", tzinfo=self.zone, locale=self.locale)
        if local.replace(fold=1 - local.fold).utcoffset() != local.utcoffset():
            # The hour repeats (DST ends): say which one, e.g. "1:30 AM PDT".
            zone = format_time(local, str(self.words["zone"]), tzinfo=self.zone, locale=self.locale)
            text = self.say("time.zone", time=text, zone=zone)
        return text

    def day(self, local: datetime) -> str:
        skeleton = str(self.words["date.year" if self.ctx.with_year else "date"])
        return format_skeleton(skeleton, local, tzinfo=self.zone, locale=self.locale)

    def stamp(self, when: datetime | None) -> str:
        local = self.local(when)
        if local is None:
            return self.say("unknown_time")
        return str(self.locale.datetime_formats["medium"]).format(
            self.clock(local), self.day(local)
        )

    def at(self, when: datetime | None, prep: str, anchor: datetime | None) -> str:
        """A time fragment (" at 8:00 AM", " until Wed, Mar 4 at 8:00 AM"); '' if unknown."""
        local, near = self.local(when), self.local(anchor)
        if local is None:
            return ""
        time = self.clock(local)
        key = f"{prep}.{'time' if near is not None and near.date() == local.date() else 'date'}"
        hour = re.match(r"\d+", time)
        if hour is not None and int(hour.group()) == 1 and f"{key}.h1" in self.words:
            key += ".h1"  # Spanish: "a la 1:30", not "a las 1:30"
        return self.say(key, time=time, date=self.day(local))

    def instant(self, value: object) -> datetime | None:
        if not isinstance(value, str) or len(value) > 64:
            return None
        try:
            return self.local(parse_time(value))
        except ValueError:
            return None

    def span(self, start_text: object, end_text: object) -> str | None:
        start, end = self.instant(start_text), self.instant(end_text)
        if start is None or end is None:
            return None
        if start.date() != end.date():
            return str(self.locale.interval_formats[None]).format(
                self.stamp(start), self.stamp(end)
            )
        skeleton = "hm" if "h" in self.locale.time_formats["short"].pattern else "Hm"
        times = format_interval(start, end, skeleton, tzinfo=self.zone, locale=self.locale)
        return str(self.locale.datetime_formats["medium"]).format(times, self.day(start))

    # ------------------------------------------------------------- money, phones
    def money(self, amount: object, currency: object) -> str | None:
        if not isinstance(amount, int) or isinstance(amount, bool) or not isinstance(currency, str):
            return None
        try:
            value = Money(amount, currency.lower())
        except ValueError:
            return None
        if abs(amount) >= 10**60:  # no real amount; keeps babel's rounding exact below
            return None
        with localcontext() as exact:
            exact.prec = 80
            return format_currency(value.decimal, value.currency.upper(), locale=self.locale)

    def phone(self, value: object) -> str | None:
        """National format for the tenant's country, international otherwise; raw if unparsable."""
        if (raw := _text(value)) is None:
            return None
        raw = _clean(raw, 64)
        try:
            number = phonenumbers.parse(raw, self.ctx.country)
        except phonenumbers.NumberParseException:
            return raw
        if not phonenumbers.is_possible_number(number):
            return raw
        home = number.country_code == phonenumbers.country_code_for_region(self.ctx.country)
        style = phonenumbers.PhoneNumberFormat
        return _clean(
            phonenumbers.format_number(number, style.NATIONAL if home else style.INTERNATIONAL)
        )

    # ------------------------------------------------------------------- facts
    def facts(self, tool: str, args: Mapping[str, Any]) -> dict[str, str]:
        """Every placeholder value the arguments support; absent facts stay absent."""
        out: dict[str, str | None] = {"tool": self.quote(tool, 80)}
        for key in ("contact_id", "calendar_id", "event_id", "event_uuid", "payment_intent"):
            out[key] = _clean(v) if (v := _text(args.get(key))) else None
        for key in ("customer", "customer_id", "email"):
            out[key] = _clean(v) if (v := _text(args.get(key))) else None
        for key in ("body", "message", "title", "summary", "description", "reason"):
            out[key] = self.quote(v) if (v := _text(args.get(key))) else None
        out["to"], out["phone"] = self.phone(args.get("to")), self.phone(args.get("phone"))
        kind = args.get("type")
        out["sms_contact"] = out["contact_id"] if kind == "SMS" else None
        out["email_contact"] = out["contact_id"] if kind == "Email" else None
        names = [_clean(n) for key in ("first_name", "last_name") if (n := _text(args.get(key)))]
        out["name"] = " ".join(names) or None
        people = args.get("attendees")
        if isinstance(people, list) and people and all(_text(p) for p in people):
            out["attendees"] = self.listing([_clean(p) for p in people], cap=3)
        invitee = args.get("invitee")
        if isinstance(invitee, dict):
            who = _text(invitee.get("name")) or _text(invitee.get("email"))
            out["invitee"] = _clean(who) if who else None
        if (uri := _text(args.get("event_type"))) is not None:
            out["event_type"] = _clean(uri.rstrip("/").rsplit("/", 1)[-1]) or None
        out["span"] = self.span(args.get("start"), args.get("end")) or self.span(
            args.get("start_time"), args.get("end_time")
        )
        out["range"] = self.span(args.get("time_min"), args.get("time_max"))
        out["money"] = self.money(args.get("amount"), args.get("currency"))
        if (why := _text(args.get("reason"))) is not None:
            out["refund_reason"] = self.pick(f"refund.{why}", {}) or out["reason"]
        if (total := _total(args.get("lines"))) is not None:
            digits = max(0, -int(total.as_tuple().exponent))
            pattern = "#,##0" + ("." + "0" * digits if digits else "")
            out["total"] = format_decimal(total, format=pattern, locale=self.locale)
        try:
            due = date.fromisoformat(str(args.get("due_date")))
            out["due"] = format_date(due, str(self.words["due"]), locale=self.locale)
        except ValueError:
            pass
        contact = out["contact_id"]
        out["recipient"] = out["to"] or (self.say("contact", id=contact) if contact else None)
        return {key: value for key, value in out.items() if value}

    def phrase(self, tool: str, facts: Mapping[str, str], form: str) -> str:
        return self.say(f"tool.{tool if tool in _TOOLS else 'other'}.{form}", **facts)

    def actor(self, actor: Actor, obj: bool = False) -> str:
        values = {"id": _clean(actor.id)}
        if actor.role:
            values["role"] = _clean(actor.role)
        return self.say(f"actor.{actor.kind}{'.obj' if obj else ''}", **values)

    def calls(self, key: str, ids: Sequence[str]) -> str:
        if not ids:
            return ""
        form = "one" if len(ids) == 1 else "other"
        return self.say(f"{key}.{form}", ids=self.listing([_clean(i) for i in ids]))

    def reasons(self, rules: Sequence[str], facts: Mapping[str, str]) -> str | None:
        said = []
        for rule in _dedupe(rules):
            key = f"rule.{rule}" if rule in _RULES else "rule.other"
            said.append(self.say(key, rule=self.quote(rule, 60), **facts))
        return self.listing(said) if said else None

    # ------------------------------------------------------------------- lines
    def line(self, slot: _Slot) -> Line:
        entry = slot.entry
        at = _raw_time(entry.raw) if isinstance(entry, UnknownEntry) else entry.at
        kind = entry.kind
        try:
            sentence = self.sentence(slot)
        except Exception:  # the owner's dashboard must render whatever the log holds
            sentence = self.say("fallback", kind=self.quote(kind, 80))
        try:
            when = self.stamp(at)
        except Exception:
            when = self.say("unknown_time")
        ids = (_entry_id(entry), *(_entry_id(part) for part, _ in slot.parts))
        call_id = entry.data.call_id if isinstance(entry, _CallEntry) else None
        text = self.say("line", when=when, sentence=sentence)
        return Line(at, when, sentence, text, ids, call_id)

    def sentence(self, slot: _Slot) -> str:
        entry = slot.entry
        if isinstance(entry, ActionRequested):
            return self.story(entry, slot)
        text = self.single(entry)
        if slot.erased:
            text += self.say("erased")
        if isinstance(entry, _CallEntry):
            text += " " + self.say("call_tag", id=_clean(entry.data.call_id))
        return text

    def story(self, request: ActionRequested, slot: _Slot) -> str:
        facts = self.facts(request.data.tool, {**request.data.args, **slot.args})
        outcomes = [p for p, _ in slot.parts if isinstance(p, ActionExecuted | ActionFailed)]
        done = bool(outcomes) and getattr(outcomes[-1].data, "status", "") == "succeeded"
        erased = slot.erased or any(erased for _, erased in slot.parts)
        head = self.say(
            "story.did" if done else "story.ask",
            actor=self.actor(request.actor),
            phrase=self.phrase(request.data.tool, facts, "did" if done else "do"),
            erased=self.say("erased") if erased else "",
        )
        said = [self.finish(head)]
        shown, last = request.at, self.stamp(request.at)
        for part, _ in slot.parts:  # a part names its time when it differs from the last named
            when = "" if self.stamp(part.at) == last else self.at(part.at, "at", shown)
            if when:
                shown, last = part.at, self.stamp(part.at)
            if clause := self.follow_up(part, facts, when):
                said.append(clause)
        said.append(self.say("call_tag", id=_clean(request.data.call_id)))
        return " ".join(said)

    def follow_up(self, part: _CallEntry, facts: Mapping[str, str], when: str) -> str:
        match part:
            case ActionVerdict():
                return self.verdict(part, facts, when)
            case OperatorDecision():
                key = "story.approve" if part.data.decision is Decision.APPROVE else "story.reject"
                return self.say(key, actor=self.actor(part.actor), when=when)
            case ActionFailed():
                return self.say("story.failed", when=when, **self.failure(part))
            case ActionExecuted() if part.data.status == "unknown":
                return self.say("story.unknown", when=when)
            case ActionExecuted():
                event = self.event(part)
                return self.say("story.ok", when=when, event=event) if when or event else ""
        return ""

    def verdict(self, entry: ActionVerdict, facts: Mapping[str, str], when: str) -> str:
        data: ActionVerdictData = entry.data
        values = {"when": when, "refs": ""}
        if conflicts := _dedupe(data.conflicts_with):
            values["refs"] = self.say("refs", calls=self.calls("calls", conflicts))
        if (reasons := self.reasons(data.rules, facts)) is not None:
            values["reasons"] = reasons
        observed = self.reasons(data.observed, facts)
        key = f"verdict.{data.verdict.value}"
        if data.verdict is Verdict.ALLOW and reasons is None and observed is not None:
            key = "verdict.allow.noted"
        if data.verdict is Verdict.DEFER:
            waits = _dedupe(data.waits_for)
            values["until"] = self.at(data.not_before, "until", entry.at)
            values["waits"] = self.calls("waits", waits)
            if waits and set(conflicts) <= set(waits):
                values["refs"] = ""  # "waiting for call c1" already names it
        text = self.say(key, **values)
        if observed is not None:
            text += " " + self.say("verdict.observed", reasons=observed)
        return text

    def fragment(self, key: str, value: object, quoted: bool = True) -> str:
        """An optional fragment (" Reason: “…”.") for a non-empty string value, else ''."""
        if (text := _text(value)) is None:
            return ""
        return self.say(key, text=self.quote(text) if quoted else _clean(text))

    def failure(self, entry: ActionFailed) -> dict[str, str]:
        detail = self.fragment("detail", entry.data.message)
        return {"error": _clean(entry.data.error), "detail": detail}

    def event(self, entry: ActionExecuted) -> str:
        return self.fragment("event", entry.data.result.get("event_id"), quoted=False)

    def single(self, entry: Entry) -> str:
        """The sentence of an entry told on its own (not part of a story)."""
        match entry:
            case ActionVerdict():
                bare = self.phrase(entry.data.tool, {"tool": self.quote(entry.data.tool)}, "do")
                head = self.say("alone.verdict", actor=self.actor(entry.actor), phrase=bare)
                return head + " " + self.verdict(entry, {}, "")
            case ActionExecuted() | ActionFailed():
                bare = self.phrase(entry.data.tool, {"tool": self.quote(entry.data.tool)}, "do")
                if isinstance(entry, ActionFailed):
                    return self.say("alone.failed", phrase=bare, **self.failure(entry))
                if entry.data.status == "unknown":
                    return self.say("alone.unknown", phrase=bare)
                return self.say("alone.ok", phrase=bare, event=self.event(entry))
            case OperatorDecision():
                key = "alone.approve" if entry.data.decision is Decision.APPROVE else "alone.reject"
                esc = self.fragment("escalation", entry.data.escalation_id, quoted=False)
                return self.say(key, actor=self.actor(entry.actor), escalation=esc)
            case DelegationMinted():
                data = entry.data
                values = {"id": _clean(data.delegation_id), "agent": _clean(data.agent)}
                if tools := _dedupe(data.tools):
                    values["tools"] = self.listing([_clean(t) for t in tools])
                until = self.at(data.expires_at, "until", entry.at)
                return self.say("delegation", actor=self.actor(entry.actor), until=until, **values)
            case CredentialConnected() | CredentialRotated() | CredentialRevoked():
                cred, key = entry.data, "cred." + entry.kind.rsplit(".", 1)[1]
                provider = _PROVIDERS.get(cred.provider) or _clean(cred.provider)
                reason = self.fragment("reason", cred.reason)
                return self.say(
                    key,
                    actor=self.actor(entry.actor),
                    provider=provider,
                    id=_clean(cred.connection_id),
                    reason=reason,
                )
            case TemplateActivated():
                tpl, key = (
                    entry.data,
                    "template.auto" if entry.data.automatic else "template.manual",
                )
                return self.say(
                    key,
                    actor=self.actor(entry.actor),
                    version=_clean(tpl.version),
                    template=self.quote(tpl.template, 80),
                    id=_clean(tpl.activation_id),
                )
            case TemplateNotice():
                notice = entry.data
                values = {
                    "actor": self.actor(entry.actor),
                    "version": _clean(notice.version),
                    "template": self.quote(notice.template, 80),
                    "id": _clean(notice.activation_id),
                    "newest": self.fragment("newest", notice.replacement, quoted=False),
                }
                if (local := self.local(notice.sunset_at)) is not None:
                    words = str(self.words["due"])
                    values["date"] = format_date(local.date(), words, locale=self.locale)
                return self.say(f"template.{notice.notice}", **values)
            case SandboxStarted() | SandboxStopped():
                box, key = entry.data, "sandbox." + entry.kind.rsplit(".", 1)[1]
                values = {
                    "agent": _clean(box.agent),
                    "id": _clean(box.sandbox_id),
                    "backend": _clean(box.backend),
                    "isolation": self.fragment("isolation", box.isolation, quoted=False),
                    "reason": self.fragment("reason", box.reason),
                    "exit": ""
                    if box.exit_code is None
                    else self.say("exit", text=str(box.exit_code)),
                }
                return self.say(key, actor=self.actor(entry.actor), **values)
            case UnknownEntry():
                values = {"kind": self.quote(entry.kind, 80)}
                try:
                    actor = Actor.model_validate(entry.raw.get("actor"))
                    values |= {"actor": self.actor(actor), "actor_obj": self.actor(actor, True)}
                except ValidationError:
                    pass
                return self.say("unknown", **values)
        return self.say("fallback", kind=self.quote(entry.kind, 80))


def _raw_time(raw: Mapping[str, Any]) -> datetime | None:
    value = raw.get("at")
    try:
        return parse_time(value) if isinstance(value, str) and len(value) <= 64 else None
    except ValueError:
        return None


_TOOLS = frozenset(k[5:-3] for k in EN if k.startswith("tool.") and k.endswith(".do")) - {"other"}
_RULES = frozenset(k[5:] for k in EN if k.startswith("rule.")) - {"other"}
