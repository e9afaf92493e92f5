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

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

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

PROVIDER_MODULES = ("twilio", "stripe", "google_calendar", "calendly", "quickbooks", "ghl")


@cache
def providers() -> dict[str, Provider]:
    """Every provider by name (the tool-name prefix), imported on first use."""
    found: dict[str, Provider] = {}
    for name in PROVIDER_MODULES:
        provider: Provider = importlib.import_module(f"corral.connectors.{name}").PROVIDER
        assert provider.name == name, f"corral.connectors.{name} declares {provider.name!r}"
        found[name] = provider
    return found


@cache
def catalog() -> dict[str, Tool[Any]]:
    """Every catalog tool by name (``twilio.send_sms``)."""
    return {tool.name: tool for provider in providers().values() for tool in provider.tools}


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
