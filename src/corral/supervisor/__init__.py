"""The coordination supervisor: every call of every agent of a tenant, decided before it runs.

``SUPERVISOR.md`` is the contract: each call gets ``allow``, ``deny``, ``defer`` or
``escalate``, from rules that compare it with the tenant's live and recent calls (messages to
the same recipient, overlapping bookings of one calendar, refunds of one payment intent, ...).
The pieces, one idea each:

- :mod:`~corral.supervisor.policy`: the tenant's validated policy (``TOOLS.md``);
- :mod:`~corral.supervisor.effects`: a call's effect from its tool's declaration;
- :mod:`~corral.supervisor.ledger`: the tenant's calls and the indexes the rules read;
- :mod:`~corral.supervisor.rules`: one small function per rule;
- :mod:`~corral.supervisor.classifier`: :class:`TenantSupervisor`, the verdict and its
  explanation;
- :mod:`~corral.supervisor.evaluation`: ``corral supervisor eval`` over scenario files.

>>> from datetime import UTC, datetime
>>> supervisor = TenantSupervisor(load_policy({"opted_out": ["(310) 555-0100"]}))
>>> at = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)
>>> decision = supervisor.decide("c1", "receptionist-1", "twilio.send_sms",
...                              {"to": "+13105550100", "body": "Hi!"}, at)
>>> decision.verdict.value, decision.rules
('deny', ['opted_out'])
"""

from corral.supervisor.classifier import (
    CallStateError,
    Decision,
    SupervisorError,
    TenantSupervisor,
    UnknownCall,
)
from corral.supervisor.evaluation import Report, ScenarioError, evaluate, load_scenarios
from corral.supervisor.policy import PolicyError, RuleId, TenantPolicy, load_policy

__all__ = [
    "CallStateError",
    "Decision",
    "PolicyError",
    "Report",
    "RuleId",
    "ScenarioError",
    "SupervisorError",
    "TenantPolicy",
    "TenantSupervisor",
    "UnknownCall",
    "evaluate",
    "load_policy",
    "load_scenarios",
]
