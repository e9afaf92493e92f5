"""The scrubber removes every 8-character piece of a secret, raw or encoded, and nothing else."""

from __future__ import annotations

import base64
import string
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from corral.broker.scrub import REDACTED, WINDOW, Scrubber

SECRET_CHARS = string.ascii_letters + string.digits + "_-+/=:."
secrets = st.text(alphabet=SECRET_CHARS, min_size=WINDOW, max_size=60)
filler = st.text(alphabet=" ,;()!?#", max_size=20)


def _windows(text: str) -> set[str]:
    return {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


def _encoded(secret: str, how: str, prefix: str) -> str:
    raw = (prefix + secret).encode()
    if how == "raw":
        return prefix + secret
    if how == "b64":
        return base64.b64encode(raw).decode()
    if how == "b64url":
        return base64.urlsafe_b64encode(raw).decode()
    if how == "hex":
        return raw.hex()
    return quote(prefix + secret, safe="")


@given(
    secret=secrets,
    how=st.sampled_from(["raw", "b64", "b64url", "hex", "url"]),
    prefix=st.sampled_from(["", "u:", "ab:", "user:"]),
    before=filler,
    after=filler,
)
def test_no_window_of_a_secret_survives_in_any_encoding(
    secret: str, how: str, prefix: str, before: str, after: str
) -> None:
    scrubbed = Scrubber([secret]).text(before + _encoded(secret, how, prefix) + after)
    forms = {
        secret,
        base64.b64encode(secret.encode()).decode(),
        secret.encode().hex(),
        quote(secret, safe=""),
    }
    for form in forms:
        assert not (_windows(form) - {REDACTED[i : i + WINDOW] for i in range(3)}) & _windows(
            scrubbed.replace(REDACTED, "\x00")
        ), (form, scrubbed)


@given(st.text(alphabet=" abcdefghij.,!", max_size=200))
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert Scrubber(["sk_test_ZZZZ9999YYYY8888"]).text(text) == text


def test_partial_leaks_and_credential_shapes_are_redacted() -> None:
    scrubber = Scrubber(["sk_test_4eC39HqLyjWDarjtT1zdp7dc"])
    assert "HqLyjWDa" not in scrubber.text("key ending ...HqLyjWDa was refused")
    assert scrubber.text("Authorization: Bearer abcdefghijklmnop") == "Authorization: [redacted]"
    assert scrubber.text("use sk_live_abcdefghijkl now") == "use [redacted] now"
    assert scrubber.text("refresh_token=rt_abcdefghijk&x=1") == "[redacted]&x=1"


def test_json_values_and_keys_are_scrubbed_recursively() -> None:
    scrubber = Scrubber(["secret-value-123456"])
    scrubbed = scrubber.json(
        {"ok": 1, "list": ["a secret-value-123456 b"], "secret-value-123456": True}
    )
    assert scrubbed == {"ok": 1, "list": [f"a {REDACTED} b"], REDACTED: True}


def test_short_values_are_not_windowed() -> None:
    assert Scrubber(["1234"]).text("invoice 1234 total 12345") == "invoice 1234 total 12345"
