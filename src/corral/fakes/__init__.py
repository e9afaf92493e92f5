"""Local provider sandboxes: one ASGI app per provider, following its published description.

Each fake (``corral.fakes.<provider>``) serves the provider's own paths, auth schemes, error
bodies, idempotency and refresh-token rotation, as the descriptions in ``specs/`` and
``specs/NOTES.md`` give them; contract tests check both sides of every exchange against those
descriptions (:mod:`corral.fakes._contract`).

- :func:`create_fakes` builds all six;
- :class:`FakeTransport` routes ``http://<provider>.fake/...`` to them in-process (tests,
  ``corral demo``);
- :func:`combined_app` mounts them under ``/<provider>`` of one server (``corral fakes serve``).

>>> fakes = create_fakes()
>>> sorted(fakes)
['calendly', 'ghl', 'google_calendar', 'quickbooks', 'stripe', 'twilio']
>>> fakes["stripe"].endpoints("http://stripe.fake").api
'http://stripe.fake'
"""

from corral.fakes._common import Fake, Faults, OAuthAuthority
from corral.fakes._contract import Exchange
from corral.fakes._registry import (
    FakeTransport,
    combined_app,
    create_fakes,
    fake_endpoints,
    fake_root,
)

__all__ = [
    "Exchange",
    "Fake",
    "FakeTransport",
    "Faults",
    "OAuthAuthority",
    "combined_app",
    "create_fakes",
    "fake_endpoints",
    "fake_root",
]
