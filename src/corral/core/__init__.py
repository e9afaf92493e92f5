"""What every component shares: canonical JSON, injected time and ids, money, errors, settings.

>>> from corral.core import canonicalize
>>> canonicalize({"b": 1, "a": [True, None]})
b'{"a":[true,null],"b":1}'
"""

from corral.core.canonical import canonicalize, loads_strict
from corral.core.clock import Clock, ManualClock, SystemClock, format_time, parse_time
from corral.core.errors import (
    AnchorError,
    AuditError,
    BrokerError,
    CanonicalizationError,
    ConfigError,
    CorralError,
    Pushback,
    StoreError,
)
from corral.core.ids import IdSource, RandomIds, SequentialIds, check_id
from corral.core.money import Money, minor_unit_digits
from corral.core.settings import (
    AnchorSettings,
    AuditSettings,
    BrokerSettings,
    ControlSettings,
    Settings,
    load_settings,
)

__all__ = [
    "AnchorError",
    "AnchorSettings",
    "AuditError",
    "AuditSettings",
    "BrokerError",
    "BrokerSettings",
    "CanonicalizationError",
    "Clock",
    "ConfigError",
    "ControlSettings",
    "CorralError",
    "IdSource",
    "ManualClock",
    "Money",
    "Pushback",
    "RandomIds",
    "SequentialIds",
    "Settings",
    "StoreError",
    "SystemClock",
    "canonicalize",
    "check_id",
    "format_time",
    "load_settings",
    "loads_strict",
    "minor_unit_digits",
    "parse_time",
]
