"""RFC 8785 JSON Canonicalization Scheme (JCS).

The canonical form is what corral hashes and signs: audit leaves, call fingerprints, approvals.
We use the maintained ``rfc8785`` package (Trail of Bits) rather than our own serializer; the
vectors in ``tests/vectors/jcs-*`` check it, including ES6 number formatting.

>>> canonicalize({"b": [1, 2.0, None], "a": "\u20ac"})
b'{"a":"\xe2\x82\xac","b":[1,2,null]}'
"""

from __future__ import annotations

import json as _json
from typing import Any

import orjson
import rfc8785

from corral.core.errors import CanonicalizationError

__all__ = ["canonicalize", "loads_strict"]

_MAX_SAFE = 2**53 - 1


def _plain(obj: Any) -> bool:
    """True if ``orjson`` with sorted keys already writes ``obj`` as RFC 8785 does.

    Audit leaves are made on every append, and ``rfc8785`` (pure Python) costs ~40x more than
    ``orjson``. The two agree byte for byte when the value has no floats (ES6 number formatting
    is the hard part of JCS), integers are within 2**53, and every object key is ASCII (then the
    byte order ``OPT_SORT_KEYS`` uses is UTF-16 order); their string escaping is the same.
    Anything else takes the ``rfc8785`` path. A property test checks the equivalence.
    """
    stack = [obj]
    pop, extend = stack.pop, stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is str or kind is bool or value is None:
            continue
        if kind is dict:
            for key in value:
                if type(key) is not str or not key.isascii():
                    return False
            extend(value.values())
        elif kind is list or kind is tuple:
            extend(value)
        elif kind is not int or not -_MAX_SAFE <= value <= _MAX_SAFE:
            return False
    return True


def canonicalize(obj: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value.

    Accepts dict (str keys), list, tuple, str, int, float, bool and None. Raises
    :class:`CanonicalizationError` (a ``ValueError``) for anything else, for integers outside
    the I-JSON range (|n| > 2**53 - 1), for NaN and infinities, and for lone surrogates.
    """
    if _plain(obj):
        try:
            return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass  # a lone surrogate (not UTF-8): let rfc8785 report it
    try:
        return bytes(rfc8785.dumps(obj))
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalizationError(f"cannot canonicalize: {exc}") from exc
    except (TypeError, ValueError, UnicodeError) as exc:
        raise CanonicalizationError(f"cannot canonicalize: {exc}") from exc


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON, refusing duplicate object keys and non-finite numbers.

    JCS is only well defined on I-JSON (RFC 7493): a duplicate key would make two different
    documents canonicalize to the same bytes, so we reject it instead of keeping the last one.
    """

    def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise CanonicalizationError(f"duplicate JSON object key {key!r}")
            out[key] = value
        return out

    def _no_constant(name: str) -> Any:
        raise CanonicalizationError(f"non-finite number {name} is not JSON")

    def _int(text: str) -> int | float:
        # JSON numbers are IEEE doubles in JCS: an integer beyond 2**53 is the double it rounds to.
        value = int(text)
        return value if abs(value) <= _MAX_SAFE else float(value)

    try:
        return _json.loads(
            data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_int=_int
        )
    except _json.JSONDecodeError as exc:
        raise CanonicalizationError(f"malformed JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise CanonicalizationError(f"JSON is not UTF-8: {exc}") from exc
