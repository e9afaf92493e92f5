"""Scrubbing: no credential, token or authorization header leaves the broker, whole or in part.

Connectors already return allow-listed results (ids and states, never a provider's whole body).
The scrubber is the second wall, applied to everything the broker sends toward a caller:
results, error messages, audit events and log lines.

A :class:`Scrubber` knows the secrets of one call (every credential field and the access token)
and redacts any **8-character window** of any of them, raw or encoded: base64 (standard and
URL-safe, at each of the three byte alignments, so a secret inside ``user:secret`` is caught
too), percent-encoding and hex (either case). It also redacts what looks like a credential
whatever its value: ``Bearer …``/``Basic …`` authorization values and Stripe-style keys.
Values shorter than 8 characters are not windowed (a realm id of four digits would otherwise
redact every number); such fields are identifiers, not secrets.

Windowing is done by hand: no library scans for fragments of known secrets in their encodings.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

WINDOW = 8
REDACTED = "[redacted]"
_PATTERNS = re.compile(
    r"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}"
    r"|\b(?:authorization|x-api-key|api[_-]?key|client_secret|refresh_token|access_token)"
    r"[\"']?\s*[:=]\s*[\"']?[^\s\"',;&]{8,}"
)


def encodings(secret: str) -> set[str]:
    """The forms a secret can take in text: raw, base64 at three alignments, URL, hex."""
    raw = secret.encode("utf-8")
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        raw.hex(),
        raw.hex().upper(),
    }
    for shift in range(3):
        padded = b"\0" * shift + raw
        for encoder in (base64.b64encode, base64.urlsafe_b64encode):
            text = encoder(padded).decode("ascii").rstrip("=")
            # The first chars encode the padding bytes and the last may mix with what follows:
            # keep only the part fully determined by the secret.
            start = (shift * 4 + 2) // 3 if shift else 0
            end = len(text) - (1 if len(padded) % 3 else 0)
            forms.add(text[start:end])
    return {form for form in forms if form}


class Scrubber:
    """Redacts the given secrets (and their encodings, and any 8-character piece of them)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._windows: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        if not isinstance(secret, str) or len(secret) < WINDOW:
            return
        for form in encodings(secret):
            for i in range(len(form) - WINDOW + 1):
                self._windows.add(form[i : i + WINDOW])

    def text(self, value: str) -> str:
        """``value`` with every secret window and credential-looking token replaced."""
        value = _PATTERNS.sub(REDACTED, value)
        if not self._windows or len(value) < WINDOW:
            return value
        hits = [False] * len(value)
        found = False
        for i in range(len(value) - WINDOW + 1):
            if value[i : i + WINDOW] in self._windows:
                found = True
                for j in range(i, i + WINDOW):
                    hits[j] = True
        if not found:
            return value
        out: list[str] = []
        i = 0
        while i < len(value):
            if hits[i]:
                while i < len(value) and hits[i]:
                    i += 1
                out.append(REDACTED)
            else:
                out.append(value[i])
                i += 1
        return "".join(out)

    def json(self, value: Any) -> Any:
        """A JSON value with every string (keys included) scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v) for v in value]
        if isinstance(value, bytes):
            return self.text(binascii.hexlify(value).decode("ascii"))
        return value
