"""How corral talks to AWS: one place for the boto3 client settings every AWS adapter uses.

Bounded timeouts and a few standard-mode retries, so that an unreachable endpoint becomes an
error the adapter can translate (and the caller can see) within seconds, not minutes.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

__all__ = ["client"]

_CONFIG = Config(
    connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
)


def client(service: str, *, region: str, endpoint_url: str | None = None) -> Any:
    """A boto3 client for ``service``; raises ``BotoCoreError``/``ValueError`` for a bad
    region or endpoint, which each adapter translates into its own error."""
    make: Any = boto3.client  # typed per service literal by the stubs; the service is a parameter
    return make(service, region_name=region, endpoint_url=endpoint_url, config=_CONFIG)
