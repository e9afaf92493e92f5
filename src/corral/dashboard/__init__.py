"""The operator dashboard: the owner's window on their agents, served by ``corral control``.

Five pages, each for one signed-in owner and only their own tenant:

- **Activity** — the audit chain told in plain English (:func:`corral.audit.prose.render_timeline`),
  newest first, filtered by agent and outcome. Every line carries its entries' leaf bytes and
  RFC 6962 inclusion proofs, and ``static/verify.js`` checks them *in the browser* with WebCrypto
  against the latest checkpoint, whose Ed25519 signature (C2SP signed note) it verifies with the
  log's published key; the anchor is checked the same way. Badges: checking, verified, not
  verified.
- **Approvals** — escalated calls with the calls they conflict with and the rule in plain words;
  approve or deny (the decision goes to the supervisor, which appends ``operator.decision``).
- **Connections** — the six providers and their status; connect, replace a key, revoke. A
  credential goes from the form to the broker and is never shown, echoed or logged.
- **Agents** — running agents, their sandbox backend and isolation level, setup template and
  version, and upgrade offers the owner opts in to.
- **Audit** — checkpoints, anchors, the public keys, and the verifiable bundle to download.

``corral control serve`` wires it (:func:`corral.dashboard.wiring.build_dashboard`): the audit
chain, the supervisor service, the broker's client and the host's admin API as the pages'
sources, mounted at ``/dashboard`` and served alone on a loopback port for the browser.

Owners are added with :meth:`corral.dashboard.auth.OwnerStore.create_owner` (argon2id hashes;
``corral control add-owner`` is its front end). Sessions are server-side
with opaque ``HttpOnly``, ``SameSite=Strict`` cookies (``Secure`` over TLS); every POST needs the
session's CSRF token; failed sign-ins are rate-limited per tenant and address.

``docs/dashboard.md`` is the manual: the pages, what in-browser verification proves and what it
does not, the security model, and screenshots.
"""

from corral.dashboard.app import DashboardSettings, create_dashboard, mount
from corral.dashboard.auth import OwnerStore
from corral.dashboard.sources import Sources

__all__ = ["DashboardSettings", "OwnerStore", "Sources", "create_dashboard", "mount"]
