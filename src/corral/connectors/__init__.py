"""The six providers and their catalog tools, each declared once (``TOOLS.md``).

One module per provider (``twilio``, ``stripe``, ``google_calendar``, ``calendly``,
``quickbooks``, ``ghl``) exports its :class:`Provider`, whose tools give the argument schema,
the effect, the prose key and the execution over httpx against a configurable base URL.

>>> sorted(providers())
['calendly', 'ghl', 'google_calendar', 'quickbooks', 'stripe', 'twilio']
>>> tool = catalog()["twilio.send_sms"]
>>> tool.parse_args({"to": "(415) 555-0100", "body": "See you at 10"}).to
'+14155550100'
>>> tool.effect(tool.parse_args({"to": "+14155550100", "body": "hi"})).kind.value
'message'
"""

from corral.connectors._base import (
    JSON,
    Arguments,
    AuthRejected,
    CallContext,
    ConnectorError,
    Credential,
    Effect,
    EffectKind,
    Endpoints,
    InvalidArguments,
    InvalidGrant,
    OutcomeUnknown,
    Provider,
    ProviderRejected,
    TokenGrant,
    Tool,
)
from corral.connectors._registry import PROVIDER_MODULES, catalog, providers

__all__ = [
    "JSON",
    "PROVIDER_MODULES",
    "Arguments",
    "AuthRejected",
    "CallContext",
    "ConnectorError",
    "Credential",
    "Effect",
    "EffectKind",
    "Endpoints",
    "InvalidArguments",
    "InvalidGrant",
    "OutcomeUnknown",
    "Provider",
    "ProviderRejected",
    "TokenGrant",
    "Tool",
    "catalog",
    "providers",
]
