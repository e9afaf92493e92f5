"""The errors of :mod:`corral.broker.delegation`, which re-exports them and draws their tree.

Split from it to keep that module to its operations; the leaves carry the data a caller needs
(delegation id, block, caveat, the expected and presented principal) and their messages name
the delegation, never the token or the proof key.
"""

from __future__ import annotations

from datetime import datetime

from corral.broker._delegation_caveats import PATTERN
from corral.core.clock import format_time
from corral.core.errors import BrokerError


class DelegationError(BrokerError):
    """Base of the errors of :mod:`corral.broker.delegation`.

    ``delegation_id`` is the token's ``id`` once it is known (after the structure checks).
    """

    delegation_id: str | None = None


class MalformedDelegation(DelegationError, ValueError):
    """Not a well-formed token: refused before any signature is checked. ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed delegation: {reason}")
        self.reason = reason


class InvalidDelegationRequest(DelegationError, ValueError):
    """A mint or an attenuation that cannot be issued (bad lifetime, pattern, recipient...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot issue this delegation: {reason}")
        self.reason = reason


class BadSignature(DelegationError):
    """A block's signature, the chain between blocks or the proof key does not verify.

    ``block`` is the index of the block at fault; ``kid`` the broker key id block 0 names.
    """

    def __init__(self, block: int, reason: str, *, kid: str | None = None) -> None:
        super().__init__(f"delegation signature does not verify: block {block}: {reason}")
        self.block = block
        self.reason = reason
        self.kid = kid


class Expired(DelegationError):
    """The delegation's effective expiry (the earliest ``exp_ms`` of its blocks) has passed."""

    def __init__(self, delegation_id: str, expired_at: datetime, now: datetime) -> None:
        super().__init__(
            f"delegation {delegation_id} expired at {format_time(expired_at)}"
            f" (now {format_time(now)})"
        )
        self.delegation_id = delegation_id
        self.expired_at = expired_at
        self.now = now


class NotYetValid(DelegationError):
    """The delegation was issued further in the future than the allowed clock skew."""

    def __init__(self, delegation_id: str, issued_at: datetime, now: datetime) -> None:
        super().__init__(
            f"delegation {delegation_id} is issued at {format_time(issued_at)}, in the future"
            f" (now {format_time(now)})"
        )
        self.delegation_id = delegation_id
        self.issued_at = issued_at
        self.now = now


class WrongPrincipal(DelegationError):
    """Presented by another tenant or agent than the one it was minted for.

    ``field`` is ``"tenant"`` or ``"agent"``; ``expected`` is the token's value, ``presented``
    the one the host stamped.
    """

    def __init__(self, delegation_id: str, field: str, expected: str, presented: str) -> None:
        super().__init__(
            f"delegation {delegation_id} belongs to {field} {expected!r}, not {presented!r}"
        )
        self.delegation_id = delegation_id
        self.field = field
        self.expected = expected
        self.presented = presented


class WrongSandbox(DelegationError):
    """Presented from another sandbox than the one that asked for it."""

    def __init__(self, delegation_id: str, expected: str, presented: str) -> None:
        super().__init__(
            f"delegation {delegation_id} is bound to sandbox {expected!r}, not {presented!r}"
        )
        self.delegation_id = delegation_id
        self.expected = expected
        self.presented = presented


class NotAuthorized(DelegationError):
    """The call is outside the delegation's scope: ``caveat`` of block ``block`` refused it."""

    def __init__(self, delegation_id: str, tool: str, caveat: str, block: int) -> None:
        shown = tool if PATTERN.fullmatch(tool) else "this tool"
        super().__init__(
            f"delegation {delegation_id} does not allow this call of {shown}:"
            f" outside its {caveat} (block {block})"
        )
        self.delegation_id = delegation_id
        self.tool = tool
        self.caveat = caveat
        self.block = block
