"""The registry of providers and catalog tools, imported on first use."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from corral.connectors._base import Provider, Tool

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
