"""RFC 8785 canonical JSON against the cyberphone vectors, and strict parsing."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.core.canonical import canonicalize, loads_strict
from corral.core.errors import CanonicalizationError
from tests.conftest import VECTORS, vector

JCS = vector("jcs-rfc8785.json")


@pytest.mark.parametrize("case", JCS["cases"], ids=lambda c: c["name"])
def test_jcs_vectors(case: dict[str, Any]) -> None:
    out = canonicalize(json.loads(case["input"]))
    assert out == bytes.fromhex(case["expected_output_hex"])
    assert out.decode() == case["expected_output"]


def _number_lines() -> list[tuple[str, str]]:
    lines = (VECTORS / "jcs-es6-numbers-lines-2169-2668.txt").read_text().splitlines()
    return [tuple(line.split(",", 1)) for line in lines if line]  # type: ignore[misc]


NUMBERS = _number_lines()


def test_number_file_has_500_lines() -> None:
    assert len(NUMBERS) == 500


@pytest.mark.parametrize(("bits", "want"), NUMBERS, ids=[b for b, _ in NUMBERS])
def test_es6_number_serialization(bits: str, want: str) -> None:
    value = struct.unpack(">d", int(bits, 16).to_bytes(8, "big"))[0]
    if math.isnan(value) or math.isinf(value):
        with pytest.raises(CanonicalizationError):
            canonicalize(value)
        return
    assert canonicalize(value).decode() == want


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (2**53, "exceeds"),
        (object(), "unsupported"),
        ("\ud800", "UTF-8"),
        ({1: "x"}, "keys must be strings"),
    ],
    ids=["nan", "inf", "big-int", "object", "lone-surrogate", "int-key"],
)
def test_rejects_what_jcs_cannot_express(value: Any, why: str) -> None:
    with pytest.raises(CanonicalizationError, match=why):
        canonicalize(value)
    with pytest.raises(ValueError):  # callers that know nothing of corral still catch it
        canonicalize(value)


def test_utf16_key_order() -> None:
    # U+10000 is encoded as the surrogate pair D800 DC00, which sorts before U+FFFD in UTF-16.
    assert canonicalize({"\ufffd": 1, "\U00010000": 2}) == '{"\U00010000":2,"\ufffd":1}'.encode()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"a": 1, "a": 2}', "duplicate"),
        ('{"a": NaN}', "non-finite"),
        ("[1,", "malformed"),
    ],
)
def test_loads_strict_refuses(text: str, why: str) -> None:
    with pytest.raises(CanonicalizationError, match=why):
        loads_strict(text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=5), children, max_size=4
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_form_is_a_fixed_point(value: Any) -> None:
    once = canonicalize(value)
    assert canonicalize(loads_strict(once)) == once
    assert b"\n" not in once


any_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@given(any_json)
def test_fast_path_agrees_with_rfc8785(value: Any) -> None:
    """The orjson fast path (no floats, ASCII keys) must be byte-identical to rfc8785."""
    import rfc8785

    try:
        want: bytes | None = bytes(rfc8785.dumps(value))
    except (ValueError, TypeError, UnicodeError):
        want = None
    if want is None:
        with pytest.raises(CanonicalizationError):
            canonicalize(value)
    else:
        assert canonicalize(value) == want


@pytest.mark.parametrize(
    "value",
    [{"é": 1, "e": 2}, {"\U00010000": 1, "\ufffd": 2}, {"a": 1.0}, {"a": '\x1f\u2028"\\'}],
    ids=["non-ascii-key", "astral-key", "float", "escapes"],
)
def test_fast_path_edges(value: Any) -> None:
    import rfc8785

    assert canonicalize(value) == bytes(rfc8785.dumps(value))
