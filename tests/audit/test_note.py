"""Tests for corral.audit.note against the shared signed-note and Rekor checkpoint vectors."""

from __future__ import annotations

import base64
import doctest
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.audit import note
from corral.audit.note import (
    Checkpoint,
    InvalidSignatureError,
    KeyFormatError,
    NoteError,
    Signature,
    Signer,
    UnverifiedNoteError,
    Verifier,
    generate_key,
    open_checkpoint,
    sign,
)
from corral.core.errors import AuditError, CorralError

VECTORS = Path(__file__).parents[1] / "vectors"
NOTES: dict[str, Any] = json.loads((VECTORS / "signed-notes.json").read_text("utf-8"))
REKOR: dict[str, Any] = json.loads((VECTORS / "sigstore-rekor-entries.json").read_text("utf-8"))
KEYS: dict[str, dict[str, Any]] = {k["name"]: k for k in NOTES["keys"]}
NOTE_BY_ID: dict[str, dict[str, Any]] = {n["id"]: n for n in NOTES["notes"]}
SIGNER_NAMES = [name for name, k in KEYS.items() if k["skey"]]
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
PETER = KEYS["PeterNeumann"]
PETER_NOTE: bytes = NOTE_BY_ID["go-note-peter"]["signed_note"].encode()
PETER_TEXT: str = NOTE_BY_ID["go-note-peter"]["text"]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def text_of(signed: str) -> str:
    return signed[: signed.rindex("\n\n") + 1]


def sig_lines(signed: str) -> list[str]:
    return signed[signed.rindex("\n\n") + 2 :].splitlines(keepends=True)


def verifier(name: str) -> Verifier:
    return Verifier.from_key(KEYS[name]["vkey"])


def signer(name: str) -> Signer:
    return Signer.from_key(KEYS[name]["skey"])


def independent_key_id(name: str, public_key: bytes) -> int:
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n\x01" + public_key).digest()[:4])


# --- module docstring -----------------------------------------------------------------------


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(note, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5
    assert result.failed == 0


# --- keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KEYS))
def test_vector_vkey_parses_and_round_trips(name: str) -> None:
    key = KEYS[name]
    v = Verifier.from_key(key["vkey"])
    assert (v.name, v.key_id_hex, v.vkey) == (name, key["key_id_hex"], key["vkey"])
    assert v.key_id == int(key["key_id_hex"], 16)
    raw = base64.b64decode(key["vkey"].split("+", 2)[2])
    assert raw[0] == 0x01 and v.public_key == raw[1:]
    assert v.key_id == independent_key_id(name, v.public_key)


@pytest.mark.parametrize("name", SIGNER_NAMES)
def test_vector_skey_matches_its_vkey(name: str) -> None:
    s = signer(name)
    assert (s.name, s.key_id_hex, s.vkey) == (name, KEYS[name]["key_id_hex"], KEYS[name]["vkey"])
    assert s.verifier() == verifier(name)
    assert s.verifier().verify(b"msg\n", s.sign(b"msg\n"))
    assert KEYS[name]["skey"].split("+")[4] not in repr(s)


def test_enoch_root_is_the_all_zero_seed() -> None:
    # Not published as an skey, but Go's EnochRoot test key is the all-zero Ed25519 seed.
    assert Signer("EnochRoot", bytes(32)).vkey == KEYS["EnochRoot"]["vkey"]


@pytest.mark.parametrize(
    "case", NOTES["bad_vkeys"], ids=[f"bad-vkey-{i}" for i in range(len(NOTES["bad_vkeys"]))]
)
def test_bad_vkey_rejected(case: dict[str, Any]) -> None:
    reason = case["reason"]
    with pytest.raises(KeyFormatError) as info:
        Verifier.from_key(case["vkey"])
    if "length" in reason or "algorithm" in reason:
        # Go decodes base64 leniently, we reject non-canonical base64 first: re-encode the key
        # canonically so that the stated reason is what fails.
        name, hex_id, key64 = case["vkey"].split("+", 2)
        canonical = b64(base64.b64decode(key64))
        if canonical != key64:
            assert "base64" in str(info.value)
        with pytest.raises(KeyFormatError, match="length" if "length" in reason else "algorithm"):
            Verifier.from_key(f"{name}+{hex_id}+{canonical}")


def test_ecdsa_vkey_rejected_as_unsupported_algorithm() -> None:
    (rekor_v1,) = REKOR["trusted_logs"]["rekor.sigstore.dev (production v1, ECDSA)"]
    with pytest.raises(KeyFormatError, match="algorithm 0x02"):
        Verifier.from_key(rekor_v1["vkey"])


@pytest.mark.parametrize("name", list(KEYS))
def test_every_proper_substring_of_vkey_rejected(name: str) -> None:
    vkey = KEYS[name]["vkey"]
    accepted = []
    for i in range(len(vkey) + 1):
        for j in range(i, len(vkey) + 1):
            if (i, j) != (0, len(vkey)):
                try:
                    Verifier.from_key(vkey[i:j])
                    accepted.append(vkey[i:j])
                except ValueError:
                    pass
    assert accepted == []


REPLACEMENTS = [chr(c) for c in range(0x20, 0x7F)] + ["\x00", "\t", "\n", "é", "—", "\u3000"]


@pytest.mark.parametrize("name", list(KEYS))
def test_every_single_character_change_of_vkey_rejected(name: str) -> None:
    vkey = KEYS[name]["vkey"]
    accepted = []
    for i, old in enumerate(vkey):
        for new in [*REPLACEMENTS, chr(ord(old) + 1)]:  # every char, and Go's byte increment
            if new != old:
                changed = vkey[:i] + new + vkey[i + 1 :]
                try:
                    Verifier.from_key(changed)
                    accepted.append(changed)
                except ValueError:
                    pass
    assert accepted == []


@pytest.mark.parametrize("name", SIGNER_NAMES)
def test_every_single_character_change_of_skey_rejected(name: str) -> None:
    skey = KEYS[name]["skey"]
    accepted = []
    for i, old in enumerate(skey):
        for new in ["+", "0", "a", "A", "/", " ", chr(ord(old) + 1)]:
            if new != old:
                try:
                    Signer.from_key(skey[:i] + new + skey[i + 1 :])
                    accepted.append(i)
                except ValueError:
                    pass
    assert accepted == []
    for k in range(len(skey)):
        with pytest.raises(ValueError):
            Signer.from_key(skey[:k])


@pytest.mark.parametrize("bad", ["", "a+b", "a b", "a\tb", "a\u3000b", "a\x7fb", "a\ud800b"])
def test_invalid_key_names_rejected(bad: str) -> None:
    with pytest.raises(KeyFormatError):
        generate_key(bad, entropy=bytes)
    with pytest.raises(KeyFormatError):
        Verifier(bad, bytes(32))


def test_generate_key_uses_injected_entropy() -> None:
    skey, vkey = generate_key("example.com/x", entropy=lambda n: b"\x07" * n)
    assert generate_key("example.com/x", entropy=lambda n: b"\x07" * n) == (skey, vkey)
    assert skey == "PRIVATE+KEY+example.com/x+" + vkey.split("+")[1] + "+" + b64(
        b"\x01" + b"\x07" * 32
    )
    assert Signer.from_key(skey).verifier() == Verifier.from_key(vkey)
    assert generate_key("example.com/x") != generate_key("example.com/x")  # os.urandom default
    with pytest.raises(ValueError):
        generate_key("example.com/x", entropy=lambda n: bytes(n - 1))


def test_verify_returns_false_instead_of_raising() -> None:
    v = verifier("PeterNeumann")
    good = signer("PeterNeumann").sign(b"m")
    assert v.verify(b"m", good)
    for bad in [b"", good[:-1], good + b"\x00", bytes(64), b"\xff" * 64, good[:63] + b"\x01"]:
        assert v.verify(b"m", bad) is False
    assert v.verify(b"n", good) is False


# --- signing and opening the vectors --------------------------------------------------------


def test_signing_vector_text_reproduces_note_byte_for_byte() -> None:
    case = NOTE_BY_ID["go-note-peter"]
    assert sign(case["text"], [signer("PeterNeumann")]) == case["signed_note"].encode()


SIGNABLE = [
    (n["id"], line)
    for n in NOTES["notes"]
    for line in sig_lines(n["signed_note"])
    if KEYS.get(line.split(" ")[1], {}).get("skey") and "corrupted" not in n["id"]
]


@pytest.mark.parametrize(("note_id", "line"), SIGNABLE, ids=[i for i, _ in SIGNABLE])
def test_signing_reproduces_each_published_signer_line(note_id: str, line: str) -> None:
    text = text_of(NOTE_BY_ID[note_id]["signed_note"])
    assert sign(text, [signer(line.split(" ")[1])]) == (text + "\n" + line).encode()


def test_signing_with_two_vector_keys_reproduces_two_signer_note() -> None:
    case = NOTE_BY_ID["go-note-peter-enoch-both-known"]
    enoch = Signer("EnochRoot", bytes(32))
    assert sign(PETER_TEXT, [signer("PeterNeumann"), enoch]) == case["signed_note"].encode()


def test_corrupted_vector_line_differs_from_real_signature() -> None:
    corrupted = sig_lines(NOTE_BY_ID["go-note-corrupted-signature"]["signed_note"])
    assert sign(PETER_TEXT, [signer("PeterNeumann")]) != (PETER_TEXT + "\n" + corrupted[0]).encode()


VALID = [n for n in NOTES["notes"] if n["expect"] == "valid"]


@pytest.mark.parametrize("case", VALID, ids=[n["id"] for n in VALID])
def test_valid_vector_opens_with_expected_signers(case: dict[str, Any]) -> None:
    opened = note.open(case["signed_note"].encode(), [verifier(n) for n in case["verify_with"]])
    assert opened.text == text_of(case["signed_note"])
    assert [s.name for s in opened.signatures] == case["expect_verified_signers"]
    assert [s.name for s in opened.unverified] == case.get("expect_unverified_signers", [])
    for s in opened.signatures + opened.unverified:
        assert s.key_id_hex == KEYS[s.name]["key_id_hex"]
        assert len(s.signature) == 64


def test_no_known_key_rejected_as_unverified() -> None:
    case = NOTE_BY_ID["go-note-no-known-key"]
    with pytest.raises(UnverifiedNoteError, match="no verifiable signatures") as info:
        note.open(case["signed_note"].encode(), [verifier("Log")])
    assert info.value.text == PETER_TEXT
    assert [s.name for s in info.value.unverified] == ["PeterNeumann", "EnochRoot"]


def test_corrupted_signature_rejected() -> None:
    case = NOTE_BY_ID["go-note-corrupted-signature"]
    with pytest.raises(InvalidSignatureError, match="PeterNeumann\\+c74f20a3") as info:
        note.open(case["signed_note"].encode(), [verifier(n) for n in case["verify_with"]])
    assert (info.value.name, info.value.key_id) == ("PeterNeumann", 0xC74F20A3)


def test_same_name_other_key_and_same_id_other_name_are_ignored() -> None:
    other_peter = Verifier("PeterNeumann", Signer("x", b"\x01" * 32).verifier().public_key)
    with pytest.raises(UnverifiedNoteError):
        note.open(PETER_NOTE, [other_peter])
    renamed = PETER_NOTE.replace("— PeterNeumann ".encode(), "— PeterNeumann2 ".encode())
    opened = note.open(
        renamed + sig_lines(PETER_NOTE.decode())[0].encode(), [verifier("PeterNeumann")]
    )
    assert [(s.name, s.key_id_hex) for s in opened.unverified] == [("PeterNeumann2", "c74f20a3")]
    assert [s.name for s in opened.signatures] == ["PeterNeumann"]


def test_repeated_lines_are_dropped_like_go() -> None:
    good = sig_lines(PETER_NOTE.decode())[0]
    bad = sig_lines(NOTE_BY_ID["go-note-corrupted-signature"]["signed_note"])[0]
    unknown = sig_lines(NOTE_BY_ID["go-note-peter-enoch-both-known"]["signed_note"])[1]
    data = (PETER_TEXT + "\n" + good + unknown + good + bad + unknown).encode()
    opened = note.open(data, [verifier("PeterNeumann")])
    assert len(opened.signatures) == 1 and len(opened.unverified) == 1
    with pytest.raises(InvalidSignatureError):
        note.open((PETER_TEXT + "\n" + bad + good).encode(), [verifier("PeterNeumann")])


def test_ambiguous_verifiers_rejected() -> None:
    v1, v2 = verifier("PeterNeumann"), Verifier("PeterNeumann", bytes(32))
    v2.key_id = v1.key_id  # a (name, key ID) collision between two different keys
    with pytest.raises(NoteError, match="ambiguous"):
        note.open(PETER_NOTE, [v1, v2])
    assert note.open(PETER_NOTE, [v1, verifier("PeterNeumann")]).signatures  # same key twice: fine


def _unknown_lines(count: int) -> str:
    return "".join(f"— unknown{i} {b64(bytes(68))}\n" for i in range(count))


PETER_LINE = sig_lines(PETER_NOTE.decode())[0]
MALFORMED = {
    "no-blank-line": PETER_TEXT + PETER_LINE,
    "no-signatures": PETER_TEXT + "\n",
    "no-final-newline": PETER_TEXT + "\n" + PETER_LINE[:-1],
    "hyphen-not-em-dash": PETER_TEXT + "\n" + PETER_LINE.replace("—", "-"),
    "no-space-after-dash": PETER_TEXT + "\n" + PETER_LINE.replace("— ", "—"),
    "no-signature-after-name": PETER_TEXT + "\n— PeterNeumann\n",
    "empty-signature": PETER_TEXT + "\n— PeterNeumann \n",
    "two-spaces": PETER_TEXT + "\n" + PETER_LINE.replace("n x08", "n  x08"),
    "bad-base64": PETER_TEXT + "\n" + PETER_LINE.replace("x08go", "x08g!"),
    "unpadded-base64": PETER_TEXT + "\n" + PETER_LINE.replace("=\n", "\n"),
    "non-canonical-base64": PETER_TEXT + "\n" + PETER_LINE.replace("AM=\n", "AN=\n"),
    "signature-too-short": PETER_TEXT + "\n— PeterNeumann " + b64(bytes.fromhex("c74f20a3")) + "\n",
    "name-with-plus": PETER_TEXT + "\n" + PETER_LINE.replace("PeterNeumann", "Peter+Neumann"),
    "carriage-return": PETER_TEXT.replace("\n", "\r\n", 1) + "\n" + PETER_LINE,
    "nul-in-text": "\x00" + PETER_TEXT + "\n" + PETER_LINE,
    "blank-line-after-signatures": PETER_TEXT + "\n" + PETER_LINE + "\n",
    "101-signature-lines": PETER_TEXT + "\n" + PETER_LINE + _unknown_lines(100),
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_note_rejected(data: str) -> None:
    with pytest.raises(NoteError, match="malformed") as info:
        note.open(data.encode(), [verifier("PeterNeumann")])
    assert type(info.value) is NoteError


def test_non_utf8_note_rejected() -> None:
    for bad in [b"\xff", b"\xed\xa0\x80", b"\xc0\xaf"]:  # invalid, surrogate, overlong
        with pytest.raises(NoteError, match="UTF-8"):
            note.open(bad + PETER_NOTE, [verifier("PeterNeumann")])


def test_text_with_empty_lines_is_split_at_the_last_blank_line() -> None:
    text = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\n"
    text += "ed è subito sera.\n\n"  # an empty line inside the text and one at its end
    signed = sign(text, [signer("Log")])
    assert note.open(signed, [verifier("Log")]).text == text


def test_one_hundred_signature_lines_accepted() -> None:
    data = (PETER_TEXT + "\n" + PETER_LINE + _unknown_lines(99)).encode()
    assert len(note.open(data, [verifier("PeterNeumann")]).unverified) == 99


@pytest.mark.parametrize("text", ["", "no newline", "a\r\n", "\x00\n", "tab\there\n", "\ud800\n"])
def test_sign_rejects_invalid_text(text: str) -> None:
    with pytest.raises(NoteError):
        sign(text, [signer("Log")])


def test_sign_rejects_bad_signer_lists() -> None:
    with pytest.raises(NoteError, match="signers"):
        sign("x\n", [])
    with pytest.raises(NoteError, match="duplicate"):
        sign("x\n", [signer("Log"), signer("Log")])
    many = [Signer(f"k{i}", bytes([i]) * 32) for i in range(101)]
    with pytest.raises(NoteError, match="signers"):
        sign("x\n", many)
    assert note.open(sign("x\n", many[:100]), [many[99].verifier()]).text == "x\n"


def test_errors_are_value_errors() -> None:
    assert issubclass(KeyFormatError, NoteError) and issubclass(NoteError, ValueError)
    assert issubclass(NoteError, AuditError) and issubclass(NoteError, CorralError)
    assert issubclass(InvalidSignatureError, NoteError)
    assert issubclass(UnverifiedNoteError, NoteError)


# --- checkpoints ----------------------------------------------------------------------------


def test_c2sp_checkpoint_example_parses() -> None:
    case = NOTE_BY_ID["c2sp-checkpoint-example-format-only"]
    text = text_of(case["signed_note"])
    cp = Checkpoint.parse(text)
    parsed = case["parsed"]
    assert (cp.origin, cp.size) == (parsed["origin"], parsed["tree_size"])
    assert cp.root == base64.b64decode(parsed["root_hash_b64"])
    assert list(cp.extensions) == parsed["extension_lines"]
    assert cp.format() == text
    with pytest.raises(UnverifiedNoteError):  # its key is not published: never trusted
        open_checkpoint(case["signed_note"].encode(), cp.origin, verifier("Log"))


def test_go_sumdb_tree_note_body_parses() -> None:
    tree = NOTES["go_sumdb_tree_note_body"]
    cp = Checkpoint.parse(tree["body"])
    assert cp.origin == "go.sum database tree"
    assert cp.size == tree["tree_size"] == 123456789012
    assert cp.root == hashlib.sha256(b"\x00" + tree["record_utf8"].encode()).digest()
    assert cp.extensions == ()
    assert cp.format() == tree["body"]


@pytest.mark.parametrize("entry", REKOR["entries"], ids=[e["case"][:40] for e in REKOR["entries"]])
def test_rekor_checkpoint_bodies_parse(entry: dict[str, Any]) -> None:
    text = text_of(entry["checkpoint"])
    cp = Checkpoint.parse(text)
    assert cp.format() == text
    proof = entry["inclusion_proof"]
    if entry["expect"] == "valid" and "root_hash_b64" in proof:
        assert (cp.size, b64(cp.root)) == (proof["tree_size"], proof["root_hash_b64"])
    if "Timestamp" in text:
        assert cp.extensions == (text.splitlines()[3],)


MALFORMED_CHECKPOINTS = {
    "no-final-newline": ("o\n1\n" + b64(bytes(32)), "newline"),
    "two-lines": ("o\n1\n", "at least 3"),
    "empty-origin": ("\n1\n" + b64(bytes(32)) + "\n", "line 1"),
    "control-in-origin": ("o\x7f\x01\n1\n" + b64(bytes(32)) + "\n", "line 1"),
    "plus-size": ("o\n+1\n" + b64(bytes(32)) + "\n", "line 2"),
    "negative-size": ("o\n-1\n" + b64(bytes(32)) + "\n", "line 2"),
    "leading-zero": ("o\n01\n" + b64(bytes(32)) + "\n", "line 2"),
    "underscore": ("o\n1_0\n" + b64(bytes(32)) + "\n", "line 2"),
    "fullwidth-digit": ("o\n\uff11\n" + b64(bytes(32)) + "\n", "line 2"),
    "space-size": ("o\n 1\n" + b64(bytes(32)) + "\n", "line 2"),
    "empty-size": ("o\n\n" + b64(bytes(32)) + "\n", "line 2"),
    "size-5000-digits": ("o\n" + "1" * 5000 + "\n" + b64(bytes(32)) + "\n", "line 2"),
    "size-2^64": (f"o\n{2**64}\n" + b64(bytes(32)) + "\n", "line 2"),
    "root-31-bytes": ("o\n1\n" + b64(bytes(31)) + "\n", "line 3"),
    "root-33-bytes": ("o\n1\n" + b64(bytes(33)) + "\n", "line 3"),
    "root-non-canonical": ("o\n1\n" + b64(bytes(32))[:-2] + "B=\n", "line 3"),
    "root-unpadded": ("o\n1\n" + b64(bytes(32))[:-1] + "\n", "line 3"),
    "root-hex": ("o\n1\n" + "00" * 32 + "\n", "line 3"),
    "empty-extension": ("o\n1\n" + b64(bytes(32)) + "\n\n", "line 4"),
    "empty-second-extension": ("o\n1\n" + b64(bytes(32)) + "\nx\n\ny\n", "line 5"),
}


@pytest.mark.parametrize(
    ("text", "match"), list(MALFORMED_CHECKPOINTS.values()), ids=list(MALFORMED_CHECKPOINTS)
)
def test_malformed_checkpoint_rejected(text: str, match: str) -> None:
    with pytest.raises(NoteError, match=match):
        Checkpoint.parse(text)


def test_checkpoint_size_bounds_and_constructor_checks() -> None:
    root = bytes(32)
    assert Checkpoint.parse(f"o\n{2**64 - 1}\n{b64(root)}\n").size == 2**64 - 1
    assert Checkpoint.parse(f"o\n0\n{b64(root)}\n").size == 0
    bad_fields: list[dict[str, Any]] = [
        {"size": -1},
        {"size": 2**64},
        {"size": True},
        {"root": bytes(31)},
        {"origin": ""},
        {"origin": "a\nb"},
        {"extensions": ("",)},
        {"extensions": ("a\nb",)},
    ]
    for kwargs in bad_fields:
        args: dict[str, Any] = {"origin": "o", "size": 1, "root": root} | kwargs
        with pytest.raises(NoteError):
            Checkpoint(**args)


# --- open_checkpoint ------------------------------------------------------------------------

CP = Checkpoint("example.com/log", 42, hashlib.sha256(b"").digest(), ("ext",))


def test_open_checkpoint_with_log_and_witness_signatures() -> None:
    data = sign(CP.format(), [signer("Log"), signer("Known"), signer("Unknown")])
    cp, opened = open_checkpoint(data, "example.com/log", verifier("Log"), verifier("Known"))
    assert cp == CP
    assert [s.name for s in opened.signatures] == ["Log", "Known"]
    assert [s.name for s in opened.unverified] == ["Unknown"]


def test_open_checkpoint_requires_the_log_signature() -> None:
    data = sign(CP.format(), [signer("Known")])
    with pytest.raises(NoteError, match="no signature from the log key Log"):
        open_checkpoint(data, "example.com/log", verifier("Log"), verifier("Known"))
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(data, "example.com/log", verifier("Log"))


def test_open_checkpoint_checks_origin_and_body() -> None:
    data = sign(CP.format(), [signer("Log")])
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(data, "example.com/other", verifier("Log"))
    with pytest.raises(NoteError, match="non-empty"):
        open_checkpoint(data, "", verifier("Log"))
    with pytest.raises(NoteError, match="line 2"):
        open_checkpoint(sign("o\nx\nr\n", [signer("Log")]), "o", verifier("Log"))


def test_open_checkpoint_verifies_before_parsing() -> None:
    # A malformed body from an untrusted key must fail on trust, never reach the parser.
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(sign("o\nx\n", [signer("Unknown")]), "o", verifier("Log"))
    tampered = sign(CP.format(), [signer("Log")]).replace(b"\n42\n", b"\n43\n")
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(tampered, "example.com/log", verifier("Log"))


# --- Rekor v2 (Ed25519) checkpoints ---------------------------------------------------------


def _log_id(log: dict[str, Any]) -> str:
    # Rekor v1 has no published log ID here: it is SHA-256 of the DER SubjectPublicKeyInfo.
    der = base64.b64decode(log["public_key_spki_der_b64"])
    return str(log.get("log_id_b64") or b64(hashlib.sha256(der).digest()))


TRUSTED_LOGS = {_log_id(log): log for logs in REKOR["trusted_logs"].values() for log in logs}


def _rekor_spki(entry: dict[str, Any]) -> tuple[str, str]:
    if "log_public_key_spki_der_b64" in entry:
        return entry["log_public_key_spki_der_b64"], "PKIX_ED25519"
    log = TRUSTED_LOGS[entry["log_id_key_id_b64"]]
    return log["public_key_spki_der_b64"], log["key_details"]


def _rekor_param(entry: dict[str, Any]) -> Any:
    case = re.sub(r"[^A-Za-z0-9.]+", "-", entry["case"]).strip("-")
    return pytest.param(entry, id=f"{case}-ed25519")


# ECDSA (Rekor v1) checkpoints are not supported, only Ed25519 notes: they are not run here but
# checked to be refused by test_ecdsa_vkey_rejected_as_unsupported_algorithm.
ED25519_REKOR = [e for e in REKOR["entries"] if _rekor_spki(e)[1] == "PKIX_ED25519"]


def _rekor_verifier(entry: dict[str, Any]) -> tuple[str, Verifier]:
    der = base64.b64decode(_rekor_spki(entry)[0])
    assert der.startswith(ED25519_SPKI_PREFIX) and len(der) == 44
    origin = entry["checkpoint"].split("\n", 1)[0]
    raw = der[-32:]
    key_b64 = b64(b"\x01" + raw)
    vkey = f"{origin}+{independent_key_id(origin, raw):08x}+{key_b64}"
    return origin, Verifier.from_key(vkey)


@pytest.mark.parametrize("entry", [_rekor_param(e) for e in ED25519_REKOR])
def test_rekor_v2_checkpoint_opens(entry: dict[str, Any]) -> None:
    assert entry["expect"] == "valid"
    origin, v = _rekor_verifier(entry)
    cp, opened = open_checkpoint(entry["checkpoint"].encode(), origin, v)
    assert [(s.name, s.key_id) for s in opened.signatures] == [(origin, v.key_id)]
    assert cp.origin == origin and cp.format() == opened.text
    if "log_id_key_id_b64" in entry:  # the Rekor v2 log ID is the untruncated key-ID hash
        log_id = base64.b64decode(entry["log_id_key_id_b64"])
        assert log_id == hashlib.sha256(origin.encode() + b"\n\x01" + v.public_key).digest()
    data = bytearray(entry["checkpoint"].encode())
    sig_at = data.rindex(b" ") + 20  # inside the signature, past the 4-byte key ID
    data[sig_at] = ord("A") if data[sig_at] != ord("A") else ord("B")
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(bytes(data), origin, v)
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(entry["checkpoint"].encode(), origin + "x", v)


def test_rekor_v1_ecdsa_checkpoints_fail_closed() -> None:
    ed25519 = [
        Verifier(
            log["base_url"].split("://")[1], base64.b64decode(log["public_key_spki_der_b64"])[-32:]
        )
        for log in TRUSTED_LOGS.values()
        if log["key_details"] == "PKIX_ED25519"
    ]
    v1 = [e for e in REKOR["entries"] if _rekor_spki(e)[1] != "PKIX_ED25519"]
    assert {e["case"] for e in v1} >= {"invalid-checkpoint-signature_fail"}
    for entry in v1:
        with pytest.raises(UnverifiedNoteError):
            note.open(entry["checkpoint"].encode(), ed25519)


# --- properties -----------------------------------------------------------------------------

CONTROLS = "".join(chr(c) for c in range(0x20) if c != 0x0A)
texts = st.lists(  # any text ending in a newline, with empty lines made likely
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters=CONTROLS + "\n")),
    min_size=1,
).map(lambda ls: "".join(line + "\n" for line in ls))
names = st.text(
    st.characters(exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"], exclude_characters="+"),
    min_size=1,
    max_size=12,
).filter(lambda s: not any(c.isspace() for c in s))
keys = st.lists(
    st.tuples(names, st.binary(min_size=32, max_size=32)), min_size=1, max_size=3, unique=True
)
lines = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=CONTROLS + "\n"), min_size=1
)


@settings(deadline=None)
@given(texts, keys)
def test_sign_open_round_trip(text: str, key_specs: list[tuple[str, bytes]]) -> None:
    signers = [Signer(n, seed) for n, seed in key_specs]
    signed = sign(text, signers)
    assert signed.startswith(text.encode() + b"\n")
    opened = note.open(signed, [s.verifier() for s in signers])
    assert opened.text == text and opened.unverified == []
    assert [(s.name, s.key_id) for s in opened.signatures] == [(s.name, s.key_id) for s in signers]
    first_only = note.open(signed, [signers[0].verifier()])
    assert [s.name for s in first_only.signatures] == [signers[0].name]
    assert len(first_only.unverified) == len(signers) - 1


@given(names, st.binary(min_size=32, max_size=32))
def test_generated_keys_round_trip(name: str, seed: bytes) -> None:
    skey, vkey = generate_key(name, entropy=lambda n: seed)
    assert Signer.from_key(skey).vkey == vkey == Verifier.from_key(vkey).vkey


@settings(deadline=None)
@given(texts, keys, st.data())
def test_single_flipped_byte_never_yields_a_different_verified_note(
    text: str, key_specs: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    signers = [Signer(n, seed) for n, seed in key_specs]
    signed = sign(text, signers)
    original = note.open(signed, [s.verifier() for s in signers])
    index = data.draw(st.integers(0, len(signed) - 1))
    flipped = bytearray(signed)
    flipped[index] ^= data.draw(st.integers(1, 255))
    try:
        opened = note.open(bytes(flipped), [s.verifier() for s in signers])
    except NoteError:
        return
    # Only possible when one of several signature lines was knocked into "unknown key":
    # the text is the signed one, and strictly fewer (never new) signatures verify.
    assert len(signers) > 1
    assert opened.text == text
    assert set(opened.signatures) < set(original.signatures)


@given(
    lines,
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(lines, max_size=3),
)
def test_checkpoint_format_parse_round_trip(
    origin: str, size: int, root: bytes, ext: list[str]
) -> None:
    cp = Checkpoint(origin, size, root, tuple(ext))
    text = cp.format()
    assert Checkpoint.parse(text) == cp
    assert Checkpoint.parse(text).format() == text
    assert text.count("\n") == 3 + len(ext) and text.endswith("\n")


def test_signature_key_id_hex() -> None:
    assert Signature("n", 0xAB, b"").key_id_hex == "000000ab"
