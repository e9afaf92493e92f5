"""Tenant policy: defaults, refusals in words, loading, and the helpers the classifier calls."""

from __future__ import annotations

import doctest
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from corral.core.errors import CorralError
from corral.core.money import Money
from corral.supervisor import policy as policy_module
from corral.supervisor.policy import (
    MessageLimits,
    MoneyLimit,
    PolicyError,
    QuietHours,
    RefundLimits,
    RuleId,
    TenantPolicy,
    load_policy,
)

LA = "America/Los_Angeles"

EXAMPLE_JSON = """{
  "timezone": "America/Los_Angeles",
  "country": "US",
  "quiet_hours": {"start": "21:00", "end": "08:00"},
  "opted_out": ["+15550100001", "pat@example.com"],
  "refunds": {
    "daily_cap": {"amount": 50000, "currency": "usd"},
    "escalate_above": {"amount": 20000, "currency": "usd"}
  },
  "messages": {"dedupe_window_s": 86400, "per_recipient_daily_max": 3},
  "calendars": {"dr-lee": ["google_calendar:lee@brightsmile.example",
                           "calendly:https://api.calendly.com/event_types/ET1"]},
  "roles": {"receptionist": ["google_calendar.*", "calendly.*", "twilio.send_sms"]},
  "agents": {"receptionist-1": "receptionist"},
  "observe_only": []
}"""

# The same document in block YAML, unquoted where a person would leave quotes out.
EXAMPLE_YAML = """\
timezone: America/Los_Angeles
country: US
quiet_hours:
  start: 21:00
  end: 08:00
opted_out:
  - "+15550100001"
  - pat@example.com
refunds:
  daily_cap: {amount: 50000, currency: usd}
  escalate_above: {amount: 20000, currency: usd}
messages:
  dedupe_window_s: 86400
  per_recipient_daily_max: 3
calendars:
  dr-lee:
    - google_calendar:lee@brightsmile.example
    - calendly:https://api.calendly.com/event_types/ET1
roles:
  receptionist: [google_calendar.*, calendly.*, twilio.send_sms]
agents:
  receptionist-1: receptionist
observe_only: []
"""


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _refused(source: Any) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policy(source)
    return caught.value


def _quiet(start: str, end: str, zone: str = "UTC") -> TenantPolicy:
    return load_policy({"timezone": zone, "quiet_hours": {"start": start, "end": end}})


# --- defaults ---------------------------------------------------------------------------------

DEFAULTS: list[tuple[str, Callable[[TenantPolicy], object], object]] = [
    ("timezone", lambda p: p.timezone, "UTC"),
    ("zone", lambda p: p.zone, ZoneInfo("UTC")),
    ("country", lambda p: p.country, "US"),
    ("quiet_hours", lambda p: p.quiet_hours, QuietHours(start="21:00", end="08:00")),
    ("opted_out", lambda p: p.opted_out, ()),
    ("refunds.daily_cap", lambda p: p.refunds.daily_cap, None),
    ("refunds.escalate_above", lambda p: p.refunds.escalate_above, None),
    ("messages.dedupe_window_s", lambda p: p.messages.dedupe_window_s, 86400),
    ("messages.per_recipient_daily_max", lambda p: p.messages.per_recipient_daily_max, 3),
    ("calendars", lambda p: p.calendars, {}),
    ("roles", lambda p: p.roles, {}),
    ("agents", lambda p: p.agents, {}),
    ("observe_only", lambda p: p.observe_only, ()),
]


@pytest.mark.parametrize(("desc", "read", "want"), DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_default_when_absent(
    desc: str, read: Callable[[TenantPolicy], object], want: object
) -> None:
    for policy in (load_policy({}), load_policy("{}"), TenantPolicy()):
        assert read(policy) == want, desc


def test_defaults_inside_a_partial_section() -> None:
    policy = load_policy(
        {
            "messages": {"dedupe_window_s": 60},
            "refunds": {"daily_cap": {"amount": 0, "currency": "eur"}},
        }
    )
    assert policy.messages == MessageLimits(dedupe_window_s=60, per_recipient_daily_max=3)
    assert policy.refunds == RefundLimits(daily_cap=MoneyLimit(amount=0, currency="eur"))
    assert policy.refunds.escalate_above is None
    assert load_policy({"refunds": {"daily_cap": None}}).refunds.daily_cap is None


def test_default_quiet_hours_apply() -> None:
    policy = TenantPolicy()
    assert policy.in_quiet_hours(_utc("2026-03-04T22:00:00Z")) == _utc("2026-03-05T08:00:00Z")
    assert policy.in_quiet_hours(_utc("2026-03-04T12:00:00Z")) is None


# --- the example document, in JSON and YAML ---------------------------------------------------


def test_example_json_and_yaml_are_the_same_policy() -> None:
    from_json = load_policy(EXAMPLE_JSON)
    from_yaml = load_policy(EXAMPLE_YAML)
    assert from_json == from_yaml
    assert from_yaml.quiet_hours == QuietHours(start="21:00", end="08:00")
    assert from_json.refunds.daily_cap == MoneyLimit(amount=50000, currency="usd")
    assert from_json.refunds.escalate_above is not None
    assert from_json.refunds.escalate_above.money == Money(20000, "usd")
    assert from_json.calendars == {
        "dr-lee": (
            "google_calendar:lee@brightsmile.example",
            "calendly:https://api.calendly.com/event_types/ET1",
        )
    }
    assert from_json.role_allows("receptionist-1", "calendly.book") is True


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(lambda tmp: EXAMPLE_JSON, id="json-text"),
        pytest.param(lambda tmp: EXAMPLE_YAML, id="yaml-text"),
        pytest.param(lambda tmp: EXAMPLE_JSON.encode(), id="json-bytes"),
        pytest.param(lambda tmp: b"\xef\xbb\xbf" + EXAMPLE_YAML.encode(), id="yaml-bytes-with-bom"),
        pytest.param(lambda tmp: _write(tmp / "p.json", EXAMPLE_JSON), id="json-file"),
        pytest.param(lambda tmp: _write(tmp / "p.yaml", EXAMPLE_YAML), id="yaml-file"),
        pytest.param(lambda tmp: _write(tmp / "policy", EXAMPLE_JSON), id="json-file-no-suffix"),
        pytest.param(lambda tmp: json.loads(EXAMPLE_JSON), id="dict"),
        pytest.param(lambda tmp: MappingProxyType(json.loads(EXAMPLE_JSON)), id="other-mapping"),
    ],
)
def test_every_kind_of_source(source: Callable[[Path], Any], tmp_path: Path) -> None:
    assert load_policy(source(tmp_path)) == load_policy(json.loads(EXAMPLE_JSON))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_through_json() -> None:
    for policy in (load_policy(EXAMPLE_YAML), TenantPolicy(), _quiet("09:30", "17:45", LA)):
        assert load_policy(policy.model_dump(mode="json")) == policy
        assert load_policy(policy.model_dump_json()) == policy


def test_yaml_reads_times_and_country_codes_as_written() -> None:
    # YAML 1.1 would read 21:00 as 1260 (base 60) and NO (Norway) as false.
    policy = load_policy("country: NO\nquiet_hours: {start: 21:00, end: 07:30}\n")
    assert policy.country == "NO"
    assert policy.quiet_hours == QuietHours(start="21:00", end="07:30")
    problems = _refused("quiet_hours: {start: 21:00, end: 7:30}\n").problems
    assert problems == ["quiet_hours.end: '7:30' is not a time of day as HH:MM (00:00 to 23:59)"]


def test_yaml_numbers_and_booleans() -> None:
    policy = load_policy("messages: {dedupe_window_s: 0, per_recipient_daily_max: 12}")
    assert policy.messages == MessageLimits(dedupe_window_s=0, per_recipient_daily_max=12)
    problems = _refused("messages: {per_recipient_daily_max: true}").problems
    assert problems == ["messages.per_recipient_daily_max: must be an integer, got true"]
    problems = _refused("messages: {per_recipient_daily_max: 2.5}").problems
    assert problems == ["messages.per_recipient_daily_max: must be an integer, got 2.5"]


# --- refusals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    desc: str
    doc: Any
    problems: list[tuple[str, str]]  # (field path, words the message must contain)


_KEYED = {"amount": 1, "currency": "usd"}
REFUSALS = [
    Refusal("unknown-field", {"colour": "blue"}, [("colour", "unknown field")]),
    Refusal(
        "unknown-nested-field",
        {"refunds": {"daily_cap": {**_KEYED, "amont": 5}}},
        [("refunds.daily_cap.amont", "unknown field; the fields here are amount, currency")],
    ),
    Refusal(
        "unknown-field-in-refunds",
        {"refunds": {"weekly_cap": _KEYED}},
        [("refunds.weekly_cap", "unknown field; the fields here are daily_cap, escalate_above")],
    ),
    Refusal(
        "unknown-field-in-quiet-hours",
        {"quiet_hours": {"start": "21:00", "end": "08:00", "tz": "UTC"}},
        [("quiet_hours.tz", "unknown field")],
    ),
    Refusal(
        "unknown-field-in-messages",
        {"messages": {"dedupe_window": 5}},
        [("messages.dedupe_window", "unknown field")],
    ),
    Refusal(
        "unknown-time-zone",
        {"timezone": "Mars/Olympus_Mons"},
        [("timezone", "unknown time zone 'Mars/Olympus_Mons'")],
    ),
    Refusal("time-zone-of-this-machine", {"timezone": "localtime"}, [("timezone", "unknown")]),
    Refusal("time-zone-path", {"timezone": "../zoneinfo/UTC"}, [("timezone", "unknown")]),
    Refusal("time-zone-empty", {"timezone": ""}, [("timezone", "unknown time zone ''")]),
    Refusal("time-zone-not-a-string", {"timezone": 5}, [("timezone", "must be a string, got 5")]),
    Refusal("unknown-country", {"country": "ZZ"}, [("country", "unknown country 'ZZ'")]),
    Refusal("country-alpha-3", {"country": "USA"}, [("country", "unknown country 'USA'")]),
    Refusal(
        "quiet-hours-start-equals-end",
        {"quiet_hours": {"start": "09:00", "end": "09:00"}},
        [("quiet_hours", "start and end are both 09:00; quiet hours need start != end")],
    ),
    Refusal(
        "quiet-hours-not-hh-mm",
        {"quiet_hours": {"start": "9pm", "end": "8:00"}},
        [
            ("quiet_hours.start", "'9pm' is not a time of day as HH:MM"),
            ("quiet_hours.end", "'8:00' is not a time of day as HH:MM"),
        ],
    ),
    Refusal(
        "quiet-hours-out-of-range",
        {"quiet_hours": {"start": "24:00", "end": "07:60"}},
        [("quiet_hours.start", "'24:00'"), ("quiet_hours.end", "'07:60'")],
    ),
    Refusal(
        "quiet-hours-with-seconds",
        {"quiet_hours": {"start": "21:00:00", "end": "08:00"}},
        [("quiet_hours.start", "'21:00:00' is not a time of day as HH:MM")],
    ),
    Refusal(
        "quiet-hours-missing-end",
        {"quiet_hours": {"start": "21:00"}},
        [("quiet_hours.end", "is required")],
    ),
    Refusal(
        "quiet-hours-not-a-mapping",
        {"quiet_hours": "21:00-08:00"},
        [("quiet_hours", 'must be a mapping, got "21:00-08:00"')],
    ),
    Refusal(
        "opted-out-not-a-recipient",
        {"opted_out": ["+15550100001", "pat"]},
        [("opted_out[1]", "'pat' is not a phone number")],
    ),
    Refusal(
        "opted-out-too-short-a-number",
        {"opted_out": ["12345"]},
        [("opted_out[0]", "'12345' is not a phone number")],
    ),
    Refusal(
        "opted-out-other-provider-prefix",
        {"opted_out": ["twilio:+15550100001"]},
        [("opted_out[0]", "'twilio:+15550100001' is not a phone number")],
    ),
    Refusal(
        "opted-out-empty-contact-id",
        {"opted_out": ["ghl_contact:"]},
        [("opted_out[0]", "'ghl_contact:' needs a contact id")],
    ),
    Refusal(
        "opted-out-bad-email",
        {"opted_out": ["pat@@example.com"]},
        [("opted_out[0]", "'pat@@example.com' is not an email address")],
    ),
    Refusal("opted-out-not-a-list", {"opted_out": "pat@example.com"}, [("opted_out", "a list")]),
    Refusal(
        "opted-out-number-in-words",
        {"opted_out": ["call +15550100001"]},
        [("opted_out[0]", "'call +15550100001' is not a phone number")],
    ),
    Refusal(
        "opted-out-vanity-number",
        {"opted_out": ["1-800-FLOWERS"]},
        [("opted_out[0]", "'1-800-FLOWERS' is not a phone number")],
    ),
    Refusal(
        "opted-out-not-a-string",
        {"opted_out": [15550100001]},
        [("opted_out[0]", "must be a string, got 15550100001")],
    ),
    Refusal(
        "negative-daily-cap",
        {"refunds": {"daily_cap": {"amount": -1, "currency": "usd"}}},
        [("refunds.daily_cap.amount", "must not be negative, got -1")],
    ),
    Refusal(
        "negative-escalate-above",
        {"refunds": {"escalate_above": {"amount": -20000, "currency": "usd"}}},
        [("refunds.escalate_above.amount", "must not be negative, got -20000")],
    ),
    Refusal(
        "amount-not-an-integer",
        {"refunds": {"daily_cap": {"amount": 12.5, "currency": "usd"}}},
        [("refunds.daily_cap.amount", "must be an integer, got 12.5")],
    ),
    Refusal(
        "amount-as-text",
        {"refunds": {"daily_cap": {"amount": "100", "currency": "usd"}}},
        [("refunds.daily_cap.amount", 'must be an integer, got "100"')],
    ),
    Refusal(
        "currency-uppercase",
        {"refunds": {"daily_cap": {"amount": 1, "currency": "USD"}}},
        [("refunds.daily_cap.currency", "'USD' is not a lowercase ISO 4217 currency code")],
    ),
    Refusal(
        "currency-unknown",
        {"refunds": {"daily_cap": {"amount": 1, "currency": "abc"}}},
        [("refunds.daily_cap.currency", "'abc' is not a lowercase ISO 4217")],
    ),
    Refusal(
        "money-without-currency",
        {"refunds": {"escalate_above": {"amount": 1}}},
        [("refunds.escalate_above.currency", "is required")],
    ),
    Refusal(
        "negative-dedupe-window",
        {"messages": {"dedupe_window_s": -1}},
        [("messages.dedupe_window_s", "must not be negative, got -1")],
    ),
    Refusal(
        "daily-max-zero",
        {"messages": {"per_recipient_daily_max": 0}},
        [("messages.per_recipient_daily_max", "must be at least 1, got 0")],
    ),
    Refusal(
        "calendar-key-in-two-groups",
        {"calendars": {"dr-lee": ["ghl:cal-1"], "dr-kim": ["google_calendar:kim", "ghl:cal-1"]}},
        [("calendars", "'ghl:cal-1' is in two groups, 'dr-lee' and 'dr-kim'")],
    ),
    Refusal(
        "calendar-key-unknown-provider",
        {"calendars": {"dr-lee": ["outlook:lee"]}},
        [("calendars.dr-lee[0]", "'outlook:lee' is not a calendar key")],
    ),
    Refusal(
        "calendar-key-without-id",
        {"calendars": {"dr-lee": ["google_calendar:"]}},
        [("calendars.dr-lee[0]", "needs an id")],
    ),
    Refusal(
        "calendly-key-not-a-uri",
        {"calendars": {"dr-lee": ["calendly:ET1"]}},
        [("calendars.dr-lee[0]", "'calendly:ET1' needs the event type URI")],
    ),
    Refusal(
        "calendar-group-named-like-a-key",
        {"calendars": {"ghl:cal-1": ["ghl:cal-2"]}},
        [("calendars", "group name 'ghl:cal-1' looks like a calendar key")],
    ),
    Refusal(
        "role-pattern-not-a-tool",
        {"roles": {"receptionist": ["twilio.send_sms", "twilio.send"]}},
        [("roles.receptionist[1]", "pattern 'twilio.send' is not a catalog tool name")],
    ),
    Refusal(
        "role-pattern-unknown-provider",
        {"roles": {"billing": ["paypal.*"]}},
        [("roles.billing[0]", "pattern 'paypal.*'")],
    ),
    Refusal(
        "role-pattern-two-wildcards",
        {"roles": {"billing": ["stripe.*.*"]}},
        [("roles.billing[0]", "pattern 'stripe.*.*'")],
    ),
    Refusal(
        "role-pattern-wildcard-provider",
        {"roles": {"billing": ["*.create_refund"]}},
        [("roles.billing[0]", "pattern '*.create_refund'")],
    ),
    Refusal(
        "role-pattern-partial-wildcard",
        {"roles": {"sms": ["twilio.send_*"]}},
        [("roles.sms[0]", "pattern 'twilio.send_*'")],
    ),
    Refusal(
        "role-pattern-case",
        {"roles": {"sms": ["Twilio.send_sms"]}},
        [("roles.sms[0]", "pattern 'Twilio.send_sms'")],
    ),
    Refusal("role-pattern-empty", {"roles": {"sms": [""]}}, [("roles.sms[0]", "pattern ''")]),
    Refusal(
        "agent-with-undefined-role",
        {"roles": {"receptionist": ["*"]}, "agents": {"bot-1": "receptionist", "bot-2": "admin"}},
        [("agents.bot-2", "role 'admin' is not defined in roles (defined: receptionist)")],
    ),
    Refusal(
        "agent-with-no-roles-at-all",
        {"agents": {"bot-1": "admin"}},
        [("agents.bot-1", "role 'admin' is not defined in roles (defined: none)")],
    ),
    Refusal(
        "unknown-observe-only-rule",
        {"observe_only": ["quiet_hours", "quiet"]},
        [("observe_only[1]", "unknown rule id 'quiet'; the rule ids are role, opted_out")],
    ),
    Refusal(
        "observe-only-not-a-string",
        {"observe_only": [1]},
        [("observe_only[0]", "must be a rule id (a string), got 1")],
    ),
    Refusal("field-name-not-a-string", "1: x\n", [("policy", "field name 1 is not a string")]),
    Refusal(
        "group-name-not-a-string",
        "roles: {1: ['*']}\n",
        [("roles.1 (the name)", "must be a string, got 1")],
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.desc)
def test_refused_naming_the_field(case: Refusal) -> None:
    error = _refused(case.doc)
    assert [p.split(": ", 1)[0] for p in error.problems] == [path for path, _ in case.problems]
    for problem, (_, words) in zip(error.problems, case.problems, strict=True):
        assert words in problem.split(": ", 1)[1], problem
        assert problem in str(error)
    assert "Input should" not in str(error) and "errors.pydantic.dev" not in str(error)


def test_all_problems_reported_together() -> None:
    error = _refused(
        {
            "timezone": "Nowhere/Land",
            "quiet_hours": {"start": "22:00", "end": "22:00"},
            "opted_out": ["pat"],
            "refunds": {"daily_cap": {"amount": -5, "currency": "usd"}},
            "roles": {"r": ["*"]},
            "agents": {"a": "q"},
            "observe_only": ["nope"],
            "extra": True,
        }
    )
    assert [p.split(":", 1)[0] for p in error.problems] == [
        "timezone",
        "quiet_hours",
        "opted_out[0]",
        "refunds.daily_cap.amount",
        "agents.a",
        "observe_only[0]",
        "extra",
    ]
    assert str(error).startswith("invalid tenant policy (7 problems): timezone: unknown time zone")
    assert error.diagnostics().splitlines()[1:] == [f"  {p}" for p in error.problems]


def test_policy_error_is_a_corral_value_error() -> None:
    error = _refused({"colour": 1})
    assert isinstance(error, ValueError) and isinstance(error, CorralError)
    assert error.problems == [
        "colour: unknown field; the fields here are " + ", ".join(TenantPolicy.model_fields)
    ]
    assert str(error) == f"invalid tenant policy: {error.problems[0]}"


def test_validating_the_model_directly_still_refuses() -> None:
    with pytest.raises(ValidationError):
        TenantPolicy.model_validate({"timezone": "Nowhere/Land"})
    policy = TenantPolicy()
    with pytest.raises(ValidationError):
        policy.timezone = "Europe/Paris"


DOCUMENTS = [
    ("duplicate-json-key", '{"timezone": "UTC", "timezone": "Europe/Paris"}', "duplicate JSON"),
    ("duplicate-nested-json-key", '{"messages": {"dedupe_window_s": 1, "dedupe_window_s": 2}}',
     "duplicate JSON object key 'dedupe_window_s'"),
    ("duplicate-yaml-key", "timezone: UTC\ncountry: US\ntimezone: Europe/Paris\n",
     "malformed YAML: line 3, column 1: duplicate key 'timezone'"),
    ("duplicate-nested-yaml-key", "roles:\n  r: ['*']\n  r: []\n", "duplicate key 'r'"),
    ("malformed-json", '{"timezone": "UTC",}', "malformed JSON"),
    ("malformed-yaml", "roles: [a, b\n", "malformed YAML: line 2"),
    ("json-list", '["timezone"]', "must be a mapping of fields, got a list"),
    ("yaml-scalar", "just words", 'must be a mapping of fields, got "just words"'),
    ("empty-text", "", "must be a mapping of fields, got null"),
    ("not-utf-8", b"timezone: \xff\n", "not UTF-8 text"),
    ("non-finite-json-number", '{"messages": {"dedupe_window_s": NaN}}', "non-finite number"),
]  # fmt: skip


@pytest.mark.parametrize(("desc", "text", "words"), DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_unreadable_documents(desc: str, text: str | bytes, words: str) -> None:
    error = _refused(text)
    assert len(error.problems) == 1
    assert error.problems[0].startswith("policy: ") and words in error.problems[0], desc


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    error = _refused(missing)
    assert error.source == str(missing)
    assert str(error) == f"invalid tenant policy {missing}: policy: cannot read the file: " + (
        "No such file or directory"
    )
    yaml_in_json = _write(tmp_path / "p.json", "timezone: UTC\n")
    assert "malformed JSON" in _refused(yaml_in_json).problems[0]
    bad = _write(tmp_path / "p.yaml", "timezone: Nowhere/Land\n")
    error = _refused(bad)
    assert error.source == str(bad) and error.problems[0].startswith("timezone: unknown")
    assert error.diagnostics().splitlines()[0] == f"invalid tenant policy {bad}:"


# --- opted_out --------------------------------------------------------------------------------

NORMALIZED = [
    ("us-national", "US", "(415) 555-0100", "+14155550100"),
    ("us-dotted", "US", "415.555.0100", "+14155550100"),
    ("us-with-trunk-prefix", "US", "1 415 555 0100", "+14155550100"),
    ("e164-kept", "US", "+15550100001", "+15550100001"),
    ("e164-with-spaces", "US", "+44 20 7946 0000", "+442079460000"),
    ("gb-national", "GB", "020 7946 0000", "+442079460000"),
    ("lowercase-country", "gb", "020 7946 0000", "+442079460000"),
    ("email-case-folded", "US", "Pat.Doe@Example.COM", "pat.doe@example.com"),
    ("email-casefold-not-lower", "US", "STRASSE@example.de", "strasse@example.de"),
    ("email-eszett", "US", "straße@example.de", "strasse@example.de"),
    ("ghl-contact-exact", "US", "ghl_contact:AbC123", "ghl_contact:AbC123"),
]


@pytest.mark.parametrize(
    ("desc", "country", "entry", "stored"), NORMALIZED, ids=[n[0] for n in NORMALIZED]
)
def test_opted_out_entries_are_normalized(desc: str, country: str, entry: str, stored: str) -> None:
    policy = load_policy({"country": country, "opted_out": [entry]})
    assert policy.opted_out == (stored,), desc
    assert policy.is_opted_out(stored)
    assert policy.is_opted_out(entry)


def test_opted_out_lookups() -> None:
    policy = load_policy(
        {"opted_out": ["(415) 555-0100", "Pat@Example.com", "ghl_contact:AbC", "+14155550100"]}
    )
    assert policy.opted_out == ("+14155550100", "pat@example.com", "ghl_contact:AbC")
    assert policy.is_opted_out("+14155550100")
    assert policy.is_opted_out("415-555-0100")
    assert not policy.is_opted_out("+14155550101")
    assert policy.is_opted_out("PAT@EXAMPLE.COM")
    assert not policy.is_opted_out("pat@example.org")
    assert policy.is_opted_out("ghl_contact:AbC")
    assert not policy.is_opted_out("ghl_contact:abc")  # provider ids compare exactly
    assert not policy.is_opted_out("ghl_contact:+14155550100")  # a contact is not a number
    assert not policy.is_opted_out("not a recipient")
    assert not TenantPolicy().is_opted_out("+14155550100")


@given(
    local=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.", min_size=1, max_size=20),
    domain=st.sampled_from(["example.com", "brightsmile.example", "xn--bcher-kva.example"]),
    flips=st.lists(st.booleans(), min_size=64, max_size=64),
)
def test_any_spelling_of_an_opted_out_email_is_opted_out(
    local: str, domain: str, flips: list[bool]
) -> None:
    address = f"{local}@{domain}"
    policy = load_policy({"opted_out": [address]})
    spelled = "".join(c.upper() if flip else c for c, flip in zip(address, flips, strict=False))
    assert policy.is_opted_out(spelled)
    assert not policy.is_opted_out(f"x{spelled}")


# --- quiet hours ------------------------------------------------------------------------------

BOUNDARIES = [
    # (desc, start, end, local time on 2026-03-04 in UTC, want end or None)
    ("before-start", "21:00", "08:00", "20:59:59", None),
    ("at-start", "21:00", "08:00", "21:00:00", "2026-03-05T08:00:00Z"),
    ("before-midnight", "21:00", "08:00", "23:59:59.999999", "2026-03-05T08:00:00Z"),
    ("at-midnight", "21:00", "08:00", "00:00:00", "2026-03-04T08:00:00Z"),
    ("a-second-before-end", "21:00", "08:00", "07:59:59", "2026-03-04T08:00:00Z"),
    ("a-microsecond-before-end", "21:00", "08:00", "07:59:59.999999", "2026-03-04T08:00:00Z"),
    ("at-end", "21:00", "08:00", "08:00:00", None),
    ("midday", "21:00", "08:00", "12:00:00", None),
    ("same-day-before", "13:00", "14:30", "12:59:59", None),
    ("same-day-at-start", "13:00", "14:30", "13:00:00", "2026-03-04T14:30:00Z"),
    ("same-day-last-second", "13:00", "14:30", "14:29:59", "2026-03-04T14:30:00Z"),
    ("same-day-at-end", "13:00", "14:30", "14:30:00", None),
    ("almost-all-day-in", "00:01", "00:00", "23:59:59", "2026-03-05T00:00:00Z"),
    ("almost-all-day-out", "00:01", "00:00", "00:00:30", None),
    ("one-minute-in", "23:59", "00:00", "23:59:59", "2026-03-05T00:00:00Z"),
]


@pytest.mark.parametrize(
    ("desc", "start", "end", "clock", "want"), BOUNDARIES, ids=[b[0] for b in BOUNDARIES]
)
def test_quiet_hours_boundaries(
    desc: str, start: str, end: str, clock: str, want: str | None
) -> None:
    at = datetime.combine(date(2026, 3, 4), time.fromisoformat(clock), tzinfo=UTC)
    got = _quiet(start, end).in_quiet_hours(at)
    assert got == (None if want is None else _utc(want)), desc
    if got is not None:
        assert got.tzinfo is UTC


def test_quiet_hours_read_in_the_tenant_zone() -> None:
    policy = _quiet("21:00", "08:00", LA)
    assert policy.in_quiet_hours(_utc("2026-03-04T04:59:59Z")) is None  # 20:59:59 PST
    assert policy.in_quiet_hours(_utc("2026-03-04T05:00:00Z")) == _utc("2026-03-04T16:00:00Z")
    # The caller's offset does not matter, only the instant.
    kolkata = datetime(2026, 3, 4, 10, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert policy.in_quiet_hours(kolkata) == _utc("2026-03-04T16:00:00Z")
    in_zone = datetime(2026, 3, 3, 23, 0, tzinfo=ZoneInfo(LA))
    assert policy.in_quiet_hours(in_zone) == _utc("2026-03-04T16:00:00Z")


def test_null_quiet_hours_disable_the_rule() -> None:
    policy = load_policy({"quiet_hours": None})
    assert policy.quiet_hours is None
    for hour in range(24):
        assert policy.in_quiet_hours(datetime(2026, 3, 4, hour, 30, tzinfo=UTC)) is None
    assert load_policy("quiet_hours: null\n").quiet_hours is None


def test_naive_times_are_refused() -> None:
    policy = TenantPolicy()
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.in_quiet_hours(datetime(2026, 3, 4, 22, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        policy.local_day(datetime(2026, 3, 4, 22, 0))


DST = [
    # America/Los_Angeles, 2026-03-08: 02:00 PST -> 03:00 PDT (10:00Z).
    ("spring-default-window-is-10h", "21:00", "08:00", "2026-03-08T05:00:00Z",
     "2026-03-08T15:00:00Z"),
    ("spring-end-in-gap-ends-at-jump", "22:00", "02:30", "2026-03-08T09:59:59Z",
     "2026-03-08T10:00:00Z"),
    ("spring-after-jump-not-quiet", "22:00", "02:30", "2026-03-08T10:00:00Z", None),
    ("spring-end-at-gap-start", "01:00", "02:00", "2026-03-08T09:30:00Z", "2026-03-08T10:00:00Z"),
    ("spring-start-in-gap-quiet-after-jump", "02:15", "05:00", "2026-03-08T10:00:00Z",
     "2026-03-08T12:00:00Z"),
    ("spring-start-in-gap-not-before", "02:15", "05:00", "2026-03-08T09:59:59Z", None),
    ("spring-jump-lands-in-window-again", "02:45", "02:30", "2026-03-08T09:59:00Z",
     "2026-03-09T09:30:00Z"),
    ("spring-jump-skips-all-time-outside", "03:00", "02:59", "2026-03-08T08:00:00Z",
     "2026-03-09T09:59:00Z"),
    ("spring-next-day-normal", "22:00", "02:30", "2026-03-09T08:00:00Z", "2026-03-09T09:30:00Z"),
    # America/Los_Angeles, 2026-11-01: 02:00 PDT -> 01:00 PST (09:00Z); 01:00-01:59 happen twice.
    ("fall-default-window-is-12h", "21:00", "08:00", "2026-11-01T04:00:00Z",
     "2026-11-01T16:00:00Z"),
    ("fall-end-repeated-first-occurrence", "22:00", "01:30", "2026-11-01T07:50:00Z",
     "2026-11-01T08:30:00Z"),
    ("fall-between-occurrences", "22:00", "01:30", "2026-11-01T08:45:00Z", None),
    ("fall-quiet-again-in-repeat", "22:00", "01:30", "2026-11-01T09:00:00Z",
     "2026-11-01T09:30:00Z"),
    ("fall-end-repeated-second-occurrence", "22:00", "01:30", "2026-11-01T09:29:59Z",
     "2026-11-01T09:30:00Z"),
    ("fall-after-second-occurrence", "22:00", "01:30", "2026-11-01T09:30:00Z", None),
    ("fall-start-in-repeat-ends-at-going-back", "01:30", "06:00", "2026-11-01T08:45:00Z",
     "2026-11-01T09:00:00Z"),
    ("fall-start-in-repeat-out-after-going-back", "01:30", "06:00", "2026-11-01T09:00:00Z", None),
    ("fall-start-in-repeat-second-time", "01:30", "06:00", "2026-11-01T09:30:00Z",
     "2026-11-01T14:00:00Z"),
    ("fall-window-inside-repeat", "01:10", "01:20", "2026-11-01T09:15:00Z",
     "2026-11-01T09:20:00Z"),
]  # fmt: skip


@pytest.mark.parametrize(("desc", "start", "end", "at", "want"), DST, ids=[d[0] for d in DST])
def test_quiet_hours_on_2026_dst_days_in_los_angeles(
    desc: str, start: str, end: str, at: str, want: str | None
) -> None:
    got = _quiet(start, end, LA).in_quiet_hours(_utc(at))
    assert got == (None if want is None else _utc(want)), desc


def test_a_deferral_ends_exactly_when_the_rule_stops_firing() -> None:
    for desc, start, end, _, want in DST:
        if want is None:
            continue
        policy = _quiet(start, end, LA)
        assert policy.in_quiet_hours(_utc(want)) is None, desc
        assert policy.in_quiet_hours(_utc(want) - timedelta(microseconds=1)) is not None, desc


ZONES = [
    "UTC",
    LA,
    "Europe/London",
    "Europe/Dublin",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/St_Johns",
    "Asia/Kolkata",
    "Africa/Casablanca",
]


@cache
def _transitions(zone_name: str) -> tuple[datetime, ...]:
    """The UTC instants at which ``zone_name`` changes offset in 2025-2027 (whole minutes)."""
    zone = ZoneInfo(zone_name)
    found: list[datetime] = []
    day = datetime(2025, 1, 1, tzinfo=UTC)
    while day.year < 2028:
        after = day + timedelta(days=1)
        if day.astimezone(zone).utcoffset() != after.astimezone(zone).utcoffset():
            lo, hi = day, after
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(second=0, microsecond=0)
                if mid.astimezone(zone).utcoffset() == lo.astimezone(zone).utcoffset():
                    lo = mid if mid > lo else lo + timedelta(minutes=1)
                else:
                    hi = mid
            found.append(hi)
        day = after
    return tuple(found)


def _inside(wall: time, start: time, end: time) -> bool:
    """Half-open window on a 24 h circle: how far past start, compared with the length."""

    def seconds(t: time) -> float:
        return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6

    return (seconds(wall) - seconds(start)) % 86400 < (seconds(end) - seconds(start)) % 86400


def _first_quiet_minute_end(at: datetime, zone: ZoneInfo, start: time, end: time) -> datetime:
    """Literal search: the first whole UTC minute after ``at`` whose wall time is outside.

    Quiet hours are whole minutes and these zones change offset on whole minutes, so the
    rule can only stop firing on a minute boundary.
    """
    u = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(50 * 60):
        if not _inside(u.astimezone(zone).time(), start, end):
            return u
        u += timedelta(minutes=1)
    raise AssertionError("quiet for more than 50 hours")


@st.composite
def _instants(draw: st.DrawFn, zone_name: str) -> datetime:
    anchors = _transitions(zone_name)
    near_a_change = draw(st.booleans())
    if anchors and near_a_change:
        anchor = draw(st.sampled_from(anchors))
        return anchor + timedelta(
            microseconds=draw(st.integers(-30 * 3600 * 10**6, 30 * 3600 * 10**6))
        )
    naive = draw(st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31)))
    return naive.replace(tzinfo=UTC)


_clock = st.builds(
    time,
    st.one_of(st.integers(0, 23), st.sampled_from([0, 1, 2, 3, 23])),
    st.one_of(st.sampled_from([0, 15, 30, 45]), st.integers(0, 59)),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), zone_name=st.sampled_from(ZONES), start=_clock, end=_clock)
def test_quiet_hours_match_a_literal_reading(
    data: st.DataObject, zone_name: str, start: time, end: time
) -> None:
    if start == end:
        return
    _check_quiet_hours(zone_name, start, end, data.draw(_instants(zone_name)))


def _check_quiet_hours(zone_name: str, start: time, end: time, at: datetime) -> None:
    """in_quiet_hours agrees with a literal reading of the window, and its end is exact."""
    zone = ZoneInfo(zone_name)
    window = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    policy = load_policy({"timezone": zone_name, "quiet_hours": window})
    got = policy.in_quiet_hours(at)
    inside = _inside(at.astimezone(zone).time(), start, end)
    assert (got is not None) == inside
    if got is None:
        return
    assert got.tzinfo is UTC
    assert at < got
    outside = timedelta(hours=start.hour - end.hour, minutes=start.minute - end.minute)
    if outside % timedelta(days=1) > timedelta(hours=1):  # longer than any jump here
        assert got <= at + timedelta(hours=25)
    else:  # a spring jump may skip the whole time outside the window: quiet for another day
        assert got <= at + timedelta(hours=49)
    assert got == _first_quiet_minute_end(at, zone, start, end)
    assert policy.in_quiet_hours(got) is None


@st.composite
def _near_a_change(draw: st.DrawFn) -> tuple[str, time, time, datetime]:
    """A window whose end sits near a DST change, and an instant shortly before that change."""
    zone_name = draw(st.sampled_from([z for z in ZONES if _transitions(z)]))
    change = draw(st.sampled_from(_transitions(zone_name)))
    zone = ZoneInfo(zone_name)
    side = draw(st.sampled_from([change - timedelta(microseconds=1), change]))
    wall = side.astimezone(zone)
    end_minute = wall.hour * 60 + wall.minute + draw(st.integers(-90, 90))
    length = draw(st.one_of(st.integers(1, 1439), st.integers(1, 180), st.integers(1260, 1439)))
    end = _minute_of_day(end_minute)
    start = _minute_of_day(end_minute - length)
    at = change + timedelta(seconds=draw(st.integers(-26 * 3600, 2 * 3600)))
    return zone_name, start, end, at


def _minute_of_day(minutes: int) -> time:
    minutes %= 1440
    return time(minutes // 60, minutes % 60)


@settings(max_examples=400, deadline=None)
@given(case=_near_a_change())
def test_quiet_hours_match_a_literal_reading_near_dst_changes(
    case: tuple[str, time, time, datetime],
) -> None:
    zone_name, start, end, at = case
    _check_quiet_hours(zone_name, start, end, at)


def test_transition_anchors_exist() -> None:
    # The property above leans on these; check they are what tzdata says.
    assert _utc("2026-03-08T10:00:00Z") in _transitions(LA)
    assert _utc("2026-11-01T09:00:00Z") in _transitions(LA)
    assert _transitions("Asia/Kolkata") == ()


# --- local day, calendars, roles, observe_only ------------------------------------------------


@pytest.mark.parametrize(
    ("at", "want"),
    [
        ("2026-03-04T07:59:59Z", date(2026, 3, 3)),
        ("2026-03-04T08:00:00Z", date(2026, 3, 4)),
        ("2026-03-08T07:59:59Z", date(2026, 3, 7)),  # before the spring jump: PST
        ("2026-03-09T06:59:59Z", date(2026, 3, 8)),  # after it: PDT
        ("2026-03-09T07:00:00Z", date(2026, 3, 9)),
        ("2026-11-02T07:59:59Z", date(2026, 11, 1)),
        ("2026-11-02T08:00:00Z", date(2026, 11, 2)),
    ],
)
def test_local_day(at: str, want: date) -> None:
    assert load_policy({"timezone": LA}).local_day(_utc(at)) == want
    assert TenantPolicy().local_day(_utc(at)) == _utc(at).date()


def test_calendar_group() -> None:
    policy = load_policy(EXAMPLE_JSON)
    assert policy.calendar_group("google_calendar:lee@brightsmile.example") == "dr-lee"
    assert policy.calendar_group("calendly:https://api.calendly.com/event_types/ET1") == "dr-lee"
    assert policy.calendar_group("google_calendar:LEE@brightsmile.example") == (
        "google_calendar:LEE@brightsmile.example"  # ids compare exactly
    )
    assert policy.calendar_group("ghl:cal-9") == "ghl:cal-9"


_calendar_keys = st.builds(
    lambda prefix, ident: prefix + ident,
    st.sampled_from(["google_calendar:", "ghl:", "calendly:https://api.calendly.com/event_types/"]),
    st.text(alphabet="abcAB01-", min_size=1, max_size=6),
)


@given(
    keys=st.lists(_calendar_keys, unique=True, min_size=1, max_size=12),
    data=st.data(),
)
def test_calendar_group_is_a_function_of_the_groups(keys: list[str], data: st.DataObject) -> None:
    membership = data.draw(st.lists(st.integers(-1, 3), min_size=len(keys), max_size=len(keys)))
    group_of = {k: f"room-{g}" for k, g in zip(keys, membership, strict=True) if g >= 0}
    groups: dict[str, list[str]] = {}
    for key, group in group_of.items():
        groups.setdefault(group, []).append(key)
    policy = load_policy({"calendars": groups})
    reordered = load_policy(
        {"calendars": {name: keys[::-1] for name, keys in reversed(groups.items())}}
    )
    for a in keys:
        assert policy.calendar_group(a) == group_of.get(a, a)
        assert reordered.calendar_group(a) == policy.calendar_group(a)
        for b in keys:
            same = a == b or (a in group_of and group_of.get(a) == group_of.get(b))
            assert (policy.calendar_group(a) == policy.calendar_group(b)) == same


ROLES = {
    "roles": {
        "receptionist": ["google_calendar.*", "calendly.*", "twilio.send_sms"],
        "admin": ["*"],
        "billing": ["stripe.create_refund", "quickbooks.*"],
        "nobody": [],
    },
    "agents": {"r-1": "receptionist", "root": "admin", "b-1": "billing", "n-1": "nobody"},
}
ROLE_CASES = [
    ("no-role-every-tool", "stranger", "stripe.create_refund", None),
    ("no-role-even-unknown", "stranger", "nope.nothing", None),
    ("provider-wildcard", "r-1", "google_calendar.delete_event", True),
    ("provider-wildcard-other", "r-1", "calendly.book", True),
    ("exact-tool", "r-1", "twilio.send_sms", True),
    ("other-provider", "r-1", "stripe.create_refund", False),
    ("other-tool-same-provider", "b-1", "stripe.create_payment_intent", False),
    ("exact-and-wildcard", "b-1", "quickbooks.create_invoice", True),
    ("star-allows-all", "root", "ghl.upsert_contact", True),
    ("empty-role-allows-none", "n-1", "twilio.send_sms", False),
    ("wildcard-not-a-prefix-match", "r-1", "google_calendarx.insert_event", False),
    ("provider-without-operation", "r-1", "google_calendar", False),
]


@pytest.mark.parametrize(
    ("desc", "agent", "tool", "want"), ROLE_CASES, ids=[c[0] for c in ROLE_CASES]
)
def test_role_allows(desc: str, agent: str, tool: str, want: bool | None) -> None:
    assert load_policy(ROLES).role_allows(agent, tool) is want, desc


def test_observed() -> None:
    policy = load_policy({"observe_only": ["quiet_hours", "retry_storm", "quiet_hours"]})
    assert policy.observe_only == (RuleId.QUIET_HOURS, RuleId.RETRY_STORM, RuleId.QUIET_HOURS)
    assert policy.observed("quiet_hours") and policy.observed(RuleId.RETRY_STORM)
    assert not policy.observed("role") and not policy.observed(RuleId.SLOT_CONFLICT)
    assert not TenantPolicy().observed("quiet_hours")


def test_rule_ids_are_those_of_supervisor_md() -> None:
    assert [r.value for r in RuleId] == [
        "role", "opted_out", "quiet_hours", "duplicate_message", "recipient_daily_max",
        "slot_conflict", "duplicate_cancel", "duplicate_refund", "refund_above_threshold",
        "refund_daily_cap", "duplicate_charge", "duplicate_invoice", "unknown_outcome",
        "retry_storm", "unknown_tool", "invalid_arguments",
    ]  # fmt: skip
    assert load_policy({"observe_only": [r.value for r in RuleId]}).observe_only == tuple(RuleId)


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(policy_module)
    assert result.failed == 0 and result.attempted >= 8
