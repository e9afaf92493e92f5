"""The root of corral's error tree.

Every component has one base class below :class:`CorralError`; leaves carry the data a caller
needs (tenant, index, key id). Errors caused by bad input also subclass :class:`ValueError`, so
code that knows nothing of corral still catches them::

    CorralError
    ├── ConfigError                (a setting is missing or wrong)
    ├── AuditError                 (corral.audit)
    │   ├── NoteError (ValueError) (a malformed or unverifiable signed note)
    │   ├── EntryError (ValueError)(an entry that does not fit its schema)
    │   ├── StoreError             (the log's storage is unreadable or inconsistent)
    │   ├── Pushback               (the sequencer is overloaded: try again later)
    │   ├── AnchorError            (an anchor store refused or lost a write)
    │   └── VerificationError      (a bundle item that does not check out)
    ├── BrokerError                (corral.broker)
    │   ├── EncryptionContextError (ValueError) (a context without tenant_id/connection_id)
    │   ├── EnvelopeError (ValueError)          (a malformed or unauthentic sealed credential)
    │   ├── KeyUnwrapError         (a wrapped data key that will not unwrap)
    │   └── KeyProviderUnavailable (the key file or KMS cannot be used)
    └── CanonicalizationError (ValueError)
"""

from __future__ import annotations


class CorralError(Exception):
    """Base of every error corral raises on purpose."""

    def diagnostics(self) -> str:
        """Text for a person: what went wrong, in one or two lines."""
        return str(self)


class ConfigError(CorralError):
    """A setting is missing, malformed or unsafe (e.g. a default secret)."""


class AuditError(CorralError):
    """Base of errors raised by :mod:`corral.audit`."""


class StoreError(AuditError):
    """The log's storage is unreadable or inconsistent, or refused a write."""


class Pushback(AuditError):
    """The sequencer is overloaded: nothing was queued, try again later.

    HTTP front ends answer 503 with ``Retry-After: <retry_after_s>`` (tessera's ``ErrPushback``).
    """

    def __init__(self, tenant: str, pending: int, retry_after_s: float = 1.0) -> None:
        super().__init__(
            f"audit log of tenant {tenant!r} has {pending} appends queued; retry later"
        )
        self.tenant = tenant
        self.pending = pending
        self.retry_after_s = retry_after_s


class AnchorError(AuditError):
    """An anchor store refused or lost a write."""


class BrokerError(CorralError):
    """Base of errors raised by :mod:`corral.broker`."""


class CanonicalizationError(CorralError, ValueError):
    """A value cannot be written as RFC 8785 canonical JSON."""
