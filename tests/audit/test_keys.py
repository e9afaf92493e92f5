"""The deployment's audit seed and the per-log keys derived from it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from corral.audit import note
from corral.audit.keys import AuditKeys, anchor_origin, log_origin
from corral.core.errors import ConfigError


def test_seed_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.seed"
    first = AuditKeys.load_or_create(path, entropy=lambda n: b"\x05" * n)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = AuditKeys.load_or_create(path, entropy=lambda n: b"\x06" * n)
    origin = log_origin("corral.test", "brightsmile")
    assert again.signer(origin).vkey == first.signer(origin).vkey  # read back, not regenerated


def test_a_seed_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.seed"
    path.write_bytes(bytes(32))
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        AuditKeys.load_or_create(path)


def test_a_seed_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.seed"
    path.write_bytes(bytes(31))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="32 bytes"):
        AuditKeys.load_or_create(path)


def test_each_log_has_its_own_key_named_after_its_origin() -> None:
    keys = AuditKeys(bytes(range(32)))
    a, b = log_origin("d", "a"), log_origin("d", "b")
    assert a == "d/tenants/a" and anchor_origin("d") == "d/anchors"
    signer_a, signer_b = keys.signer(a), keys.signer(b)
    assert signer_a.name == a and signer_b.name == b
    assert signer_a.vkey != signer_b.vkey
    signed = note.sign("d/tenants/a\n1\n" + "A" * 43 + "=\n", [signer_a])
    assert note.open(signed, [signer_a.verifier()]).signatures
    with pytest.raises(note.NoteError):
        note.open(signed, [signer_b.verifier()])
    other_seed = AuditKeys(bytes(32)).signer(a)
    assert other_seed.vkey != signer_a.vkey  # the seed, not the name, makes the key
