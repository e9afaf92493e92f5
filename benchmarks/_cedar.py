"""The baseline: corral's stateless rules written as Cedar policies, evaluated by ``cedarpy``.

Each tenant's :class:`~corral.supervisor.policy.TenantPolicy` becomes a Cedar policy set
(parsed once into a ``cedarpy.PolicySet``) and an entity set (parsed once into a
``cedarpy.Entities``): an ``Agent`` per agent, a member of its ``Role``; an ``Action`` per
catalog tool, a member of ``Action::"catalog"``, of its provider's group and of its kind's
group (``kind:message``). One ``permit`` lets everything through and one ``forbid`` per rule,
annotated ``@id("<rule id>")``, fires as that rule:

- ``role``: ``forbid(principal in Role::"R", action, resource) unless { action in [...] }``,
  the role's patterns as actions and provider groups (no forbid for a role with ``*``);
- ``unknown_tool``: ``forbid(...) unless { action in Action::"catalog" }``;
- ``opted_out``: the opted-out recipients as a set literal that contains ``context.recipient``;
- ``quiet_hours``: on ``context.local_minute``, the minute of the day in the tenant's zone;
- ``refund_above_threshold``: ``context.amount > N`` in the limit's currency.

A decision's time is that of building the request (the recipient as corral keys it: E.164,
national numbers normalized with ``phonenumbers`` in the tenant's country, or
``ghl_contact:<id>``; the local minute with ``zoneinfo``; amount and currency) plus
``cedarpy.is_authorized`` on the pre-parsed policy and entity sets, plus reading the rule ids
of the forbids that fired from the answer. The verdict is the strongest of theirs (deny for
``role``, ``unknown_tool`` and ``opted_out``, escalate for the refund threshold, defer for
quiet hours), as in corral.

What Cedar cannot express is in :data:`NOT_EXPRESSED`: every rule that compares a call with
earlier calls, since a Cedar request sees only the entities and context it is given.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cedarpy
import phonenumbers

from benchmarks._supervisor_load import Call
from corral.audit.entries import Verdict
from corral.connectors import catalog
from corral.supervisor.classifier import Decision
from corral.supervisor.policy import TenantPolicy
from corral.supervisor.rules import STRENGTH

VERDICTS = {
    "role": Verdict.DENY,
    "unknown_tool": Verdict.DENY,
    "opted_out": Verdict.DENY,
    "refund_above_threshold": Verdict.ESCALATE,
    "quiet_hours": Verdict.DEFER,
}
STATELESS = frozenset(VERDICTS)
MESSAGE_TOOLS = frozenset({"twilio.send_sms", "ghl.send_message"})  # SUPERVISOR.md, "Words"
NOT_EXPRESSED = {
    "duplicate_message": "needs earlier live messages (recipient, normalized body, window)",
    "recipient_daily_max": "needs the count of live messages to the recipient this local day",
    "slot_conflict": "needs overlapping live bookings and their outcomes (deny or defer)",
    "duplicate_cancel": "needs earlier live cancellations of the event",
    "duplicate_refund": "needs earlier live refunds on the payment intent",
    "refund_daily_cap": "needs the sum of this local day's live refunds",
    "duplicate_charge": "needs earlier live payment intents",
    "duplicate_invoice": "needs earlier live invoices and the exact decimal sum of lines",
    "unknown_outcome": "needs the outcomes of earlier calls",
    "retry_storm": "needs earlier failed identical calls (RFC 8785 of the arguments)",
    "invalid_arguments": "a schema can type context attributes, not E.164, RFC 3339 or "
    "decimal strings; corral's connector models check the arguments",
    "quiet_hours (not_before)": "only whether the call is in quiet hours: Cedar has no time "
    "zones (the local minute is computed outside and passed in context), and a defer's "
    "not_before (the end of quiet hours, across DST) cannot be returned by a policy",
    "conflicts_with / waits_for": "a Cedar answer names policies, not other calls",
}
_E164 = re.compile(r"\+[1-9][0-9]{1,14}\Z")
_NS = "Corral"


def _uid(kind: str, name: str) -> dict[str, str]:
    return {"type": f"{_NS}::{kind}", "id": name}


def _lit(value: str) -> str:
    return json.dumps(value)


def _action(tool: str) -> str:
    return f"{_NS}::Action::{_lit(tool)}"


def policy_text(policy: TenantPolicy) -> str:
    """The Cedar policies of a tenant's stateless rules."""
    out = [
        '@id("allow") permit(principal, action, resource);',
        '@id("unknown_tool") forbid(principal, action, resource)'
        f" unless {{ action in {_action('catalog')} }};",
    ]
    for role, patterns in policy.roles.items():
        if "*" in patterns:
            continue
        allowed = ", ".join(
            _action(f"provider:{p[:-2]}" if p.endswith(".*") else p) for p in patterns
        )
        out.append(
            f'@id("role") forbid(principal in {_NS}::Role::{_lit(role)}, action, '
            f"resource) unless {{ action in [{allowed}] }};"
        )
    if policy.opted_out:
        keys = ", ".join(_lit(k) for k in policy.opted_out)
        out.append(
            f'@id("opted_out") forbid(principal, action in {_action("kind:message")}, '
            f"resource) when {{ context has recipient && [{keys}].contains("
            "context.recipient) };"
        )
    quiet = policy.quiet_hours
    if quiet is not None:
        start, end = (int(t[:2]) * 60 + int(t[3:]) for t in (quiet.start, quiet.end))
        inside = (
            f"context.local_minute >= {start} && context.local_minute < {end}"
            if start < end
            else f"context.local_minute >= {start} || context.local_minute < {end}"
        )
        out.append(
            f'@id("quiet_hours") forbid(principal, action in {_action("kind:message")}'
            f", resource) when {{ {inside} }};"
        )
    limit = policy.refunds.escalate_above
    if limit is not None:
        out.append(
            f'@id("refund_above_threshold") forbid(principal, action == '
            f"{_action('stripe.create_refund')}, resource) when {{ context has amount && "
            f"context has currency && context.currency == {_lit(limit.currency)} && "
            f"context.amount > {limit.amount} }};"
        )
    return "\n".join(out)


def entities(policy: TenantPolicy, agents: Iterable[str]) -> list[dict[str, Any]]:
    """Agents (members of their roles), roles, catalog actions in their groups."""
    out: list[dict[str, Any]] = []
    for agent in agents:
        role = policy.agents.get(agent)
        out.append(
            {
                "uid": _uid("Agent", agent),
                "attrs": {},
                "parents": [_uid("Role", role)] if role else [],
            }
        )
    out += [{"uid": _uid("Role", role), "attrs": {}, "parents": []} for role in policy.roles]
    groups = {"catalog", "kind:message"}
    for name in catalog():
        groups.add(f"provider:{name.split('.')[0]}")
        parents = [_uid("Action", "catalog"), _uid("Action", f"provider:{name.split('.')[0]}")]
        if name in MESSAGE_TOOLS:
            parents.append(_uid("Action", "kind:message"))
        out.append({"uid": _uid("Action", name), "attrs": {}, "parents": parents})
    out += [{"uid": _uid("Action", g), "attrs": {}, "parents": []} for g in sorted(groups)]
    return out


@dataclass(frozen=True, slots=True)
class CedarDecision:
    verdict: Verdict
    rules: tuple[str, ...]


class _Tenant:
    def __init__(self, policy: TenantPolicy, agents: Sequence[str]) -> None:
        self.policies = cedarpy.PolicySet.from_str(policy_text(policy))
        self.entities = cedarpy.Entities.from_json_str(json.dumps(entities(policy, agents)))
        self.zone = policy.zone
        self.country = policy.country


class CedarSupervisor:
    """One Cedar policy set and entity set per tenant, parsed once."""

    def __init__(self, policies: Mapping[str, TenantPolicy], agents: Sequence[str]) -> None:
        self.tenants = {name: _Tenant(p, agents) for name, p in policies.items()}

    def request(self, call: Call) -> tuple[_Tenant, dict[str, Any]]:
        """The Cedar request for ``call``: who, which tool, and the context the rules read."""
        tenant = self.tenants[call.tenant]
        args = call.args
        local = call.at.astimezone(tenant.zone)
        context: dict[str, Any] = {"local_minute": local.hour * 60 + local.minute}
        if call.tool == "twilio.send_sms" and isinstance(args.get("to"), str):
            context["recipient"] = _phone(args["to"], tenant.country)
        elif call.tool == "ghl.send_message" and isinstance(args.get("contact_id"), str):
            context["recipient"] = f"ghl_contact:{args['contact_id']}"
        amount, currency = args.get("amount"), args.get("currency")
        if isinstance(amount, int) and not isinstance(amount, bool):
            context["amount"] = amount
        if isinstance(currency, str):
            context["currency"] = currency
        request = {
            "principal": _uid("Agent", call.agent),
            "action": _uid("Action", call.tool),
            "resource": _uid("Tenant", call.tenant),
            "context": context,
        }
        return tenant, request

    def authorize(self, tenant: _Tenant, request: dict[str, Any]) -> CedarDecision:
        answer = cedarpy.is_authorized(request, tenant.policies, tenant.entities)
        if answer.diagnostics.errors:
            raise RuntimeError(f"cedar evaluation errors: {answer.diagnostics.errors}")
        if answer.allowed:
            return CedarDecision(Verdict.ALLOW, ())
        names = answer.diagnostics.id_annotations_by_reason
        rules = tuple(sorted({names[r] for r in answer.diagnostics.reasons}))
        verdict = max((VERDICTS[r] for r in rules), key=STRENGTH.__getitem__)
        return CedarDecision(verdict, rules)

    def decide(self, call: Call) -> CedarDecision:
        """Build the request and authorize it (what the baseline's latency covers)."""
        tenant, request = self.request(call)
        return self.authorize(tenant, request)


def _phone(value: str, country: str) -> str:
    if _E164.match(value):
        return value
    try:
        number = phonenumbers.parse(value, country)
    except phonenumbers.NumberParseException:
        return value
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass
class Agreement:
    """Cedar's rules against corral's stateless rules on the same calls."""

    calls: int = 0
    agree: int = 0
    invalid: int = 0
    """Calls with invalid arguments, compared on ``role`` and ``unknown_tool`` only."""
    disagreements: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        found = [{"tool": tool, "corral": ours, "cedar": theirs, "calls": n}
                 for (tool, ours, theirs), n in self.disagreements.most_common()]  # fmt: skip
        return {"calls": self.calls, "agree": self.agree,
                "invalid_arguments_compared_on_role_and_unknown_tool": self.invalid,
                "disagreements": found, "examples": self.examples}  # fmt: skip


def agreement(
    calls: Sequence[Call], corral: Sequence[Decision], cedar: Sequence[CedarDecision]
) -> Agreement:
    """Compare, call by call, the stateless rules each reported. corral does not run the
    rules of a call's kind when its arguments are invalid (it is denied as
    ``invalid_arguments``), so such calls are compared on ``role`` and ``unknown_tool``."""
    out = Agreement()
    for call, ours, theirs in zip(calls, corral, cedar, strict=True):
        compared = STATELESS
        if "invalid_arguments" in ours.fired:
            compared = frozenset({"role", "unknown_tool"})
            out.invalid += 1
        mine = sorted(set(ours.fired) & compared)
        other = sorted(set(theirs.rules) & compared)
        out.calls += 1
        if mine == other:
            out.agree += 1
            continue
        key = (call.tool, ",".join(mine) or "-", ",".join(other) or "-")
        out.disagreements[key] += 1
        example = {"call_id": call.call_id, "agent": call.agent, "args": call.args,
                   "at": call.at.isoformat()}  # fmt: skip
        out.examples.setdefault(" / ".join(key), example)
    return out
