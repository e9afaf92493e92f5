"""Export and offline verification: a good bundle verifies; each kind of tampering is named.

The tamper suite follows the issue: a flipped byte in an entry, a deleted entry, two entries
swapped, a truncated log re-signed with another key, an anchor rolled back, a checkpoint from a
forked log; plus payloads, an unsigned tail and missing files. Bundles are exported from stores
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.audit import merkle, note
from corral.audit.anchor_store import LocalAnchorStore
from corral.audit.chain import AuditChain
from corral.audit.demo import DEMO_START, DEMO_TENANT, demo_day
from corral.audit.keys import AuditKeys, log_origin
from corral.audit.verify import Report, VerificationError, verify_bundle
from corral.core.canonical import canonicalize
from corral.core.clock import ManualClock
from tests.audit._backends import StoreUrl, _postgres_schema

DEPLOYMENT = "corral.test"
ORIGIN = log_origin(DEPLOYMENT, DEMO_TENANT)


def _export(store_url: StoreUrl, tmp: Path) -> Path:
    clock = ManualClock(DEMO_START)
    chain = AuditChain(
        deployment=DEPLOYMENT,
        store=store_url.open(),
        keys=AuditKeys(bytes(range(32))),
        anchors=LocalAnchorStore(tmp / "anchors.db"),
        clock=clock,
    )
    with chain:
        day = list(demo_day())
        for n, (entry, payload) in enumerate(day):
            clock.set(max(clock.now(), entry.at))
            chain.sequencer.append(DEMO_TENANT, entry, payload)
            if n in (9, 24):  # two anchors inside the log, one more at export
                chain.sequencer.checkpoint(DEMO_TENANT)
                chain.anchorer.anchor_now()
        chain.store.erase_personal(DEMO_TENANT, 30)
        out = tmp / "bundle"
        chain.export(DEMO_TENANT, out)
    return out


@pytest.fixture(
    name="bundle",
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def bundle_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """One exported bundle per backend; tests tamper with copies of it."""
    tmp = tmp_path_factory.mktemp("export")
    if request.param == "sqlite":
        yield _export(StoreUrl("sqlite", f"sqlite:///{tmp / 'audit.db'}"), tmp)
        return
    schemas = _postgres_schema()
    try:
        yield _export(next(schemas), tmp)
    finally:
        schemas.close()


@pytest.fixture(name="copy")
def copy_fixture(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tampered"
    shutil.copytree(bundle, out)
    return out


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _write(path: Path, objs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(canonicalize(o) + b"\n" for o in objs))


def _edit(
    path: Path, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]] | None]
) -> None:
    objs = _lines(path)
    changed = change(objs)
    _write(path, objs if changed is None else changed)


def _rehash(obj: dict[str, Any]) -> None:
    obj["hash"] = base64.b64encode(merkle.leaf_hash(canonicalize(obj["entry"]))).decode()


def _fails(bundle: Path, *pattern: str, **kwargs: Any) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify_bundle(bundle, **kwargs)
    for part in pattern:
        assert part in str(info.value), str(info.value)
    return info.value


def test_an_untouched_bundle_verifies(bundle: Path) -> None:
    report = verify_bundle(bundle)
    assert isinstance(report, Report)
    assert (report.entries, report.erased, report.anchors) == (38, 1, 3)
    assert report.anchored_size == 38 and report.checkpoints >= 3
    assert report.payloads == 6 and report.notes == []
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert verify_bundle(bundle, trusted_log_keys=[manifest["log_key"]]).entries == 38


def test_export_is_byte_identical_on_every_backend(bundle: Path) -> None:
    # Same entries, clock, seed and salts: same bundle files, whatever the database.
    digest = {p.name: merkle.leaf_hash(p.read_bytes()).hex() for p in sorted(bundle.iterdir())}
    assert digest["bundle.json"] and len(digest) == 6
    root = verify_bundle(bundle).root
    assert (
        base64.b64encode(root).decode()
        == json.loads((bundle / "checkpoints.jsonl").read_bytes().splitlines()[-1])["note"].split(
            "\n"
        )[2]
    )


def test_flipped_byte_in_an_entry(copy: Path) -> None:
    def flip(objs: list[dict[str, Any]]) -> None:
        objs[17]["entry"]["actor"]["id"] = objs[17]["entry"]["actor"]["id"].replace("r", "R", 1)

    _edit(copy / "entries.jsonl", flip)
    _fails(copy, "entry 17:", "does not match its recorded leaf hash")


def test_flipped_byte_with_its_hash_recomputed(copy: Path) -> None:
    def flip(objs: list[dict[str, Any]]) -> None:
        objs[17]["entry"]["data"]["tool"] = "stripe.create_refunD"
        _rehash(objs[17])

    _edit(copy / "entries.jsonl", flip)
    error = _fails(copy, "root does not match the entries")
    size = int(error.item.rsplit(" ", 1)[1])
    assert size >= 18, "the first checkpoint covering entry 17 fails, not an earlier one"


def test_deleted_entry(copy: Path) -> None:
    _edit(copy / "entries.jsonl", lambda objs: objs[:12] + objs[13:])
    _fails(copy, "entry 12:", "missing or out of order", "holds seq 13")


def test_two_entries_swapped(copy: Path) -> None:
    def swap(objs: list[dict[str, Any]]) -> None:
        objs[20], objs[21] = objs[21], objs[20]

    _edit(copy / "entries.jsonl", swap)
    _fails(copy, "entry 20:", "missing or out of order")


def test_two_entries_swapped_and_renumbered(copy: Path) -> None:
    def swap(objs: list[dict[str, Any]]) -> None:
        objs[20]["entry"], objs[21]["entry"] = objs[21]["entry"], objs[20]["entry"]
        _rehash(objs[20])
        _rehash(objs[21])

    _edit(copy / "entries.jsonl", swap)
    _fails(copy, "checkpoint at size", "root does not match the entries")


def _resign_truncated(bundle: Path, keep: int, replace_key: bool) -> str:
    """Truncate the log to ``keep`` entries and re-sign checkpoints with an attacker's key."""
    skey, vkey = note.generate_key(ORIGIN, entropy=lambda n: b"\x07" * n)
    attacker = note.Signer.from_key(skey)
    _edit(bundle / "entries.jsonl", lambda objs: objs[:keep])
    _edit(bundle / "personal.jsonl", lambda objs: [o for o in objs if o["seq"] < keep])
    leaves = [canonicalize(o["entry"]) for o in _lines(bundle / "entries.jsonl")]
    checkpoint = note.Checkpoint(ORIGIN, keep, merkle.root(leaves)).format()
    _write(
        bundle / "checkpoints.jsonl",
        [{"size": keep, "note": note.sign(checkpoint, [attacker]).decode()}],
    )
    _write(bundle / "consistency.jsonl", [])
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["size"] = keep
    if replace_key:
        manifest["log_key"] = vkey
    (bundle / "bundle.json").write_bytes(canonicalize(manifest) + b"\n")
    return vkey


def test_truncated_log_resigned_with_another_key(copy: Path) -> None:
    _resign_truncated(copy, 30, replace_key=False)
    _fails(copy, "checkpoint at size 30:", "signature", "no verifiable signatures")


def test_truncated_log_resigned_and_key_replaced_is_caught_by_its_anchor(copy: Path) -> None:
    _resign_truncated(copy, 30, replace_key=True)
    _fails(copy, "anchor at size", "anchored this log at size", "only 30 entries: log truncated")


def test_replaced_key_is_caught_by_a_pinned_key(bundle: Path, copy: Path) -> None:
    real = json.loads((bundle / "bundle.json").read_text())["log_key"]
    _resign_truncated(copy, 30, replace_key=True)
    _fails(copy, "log key:", "not one of the trusted keys", trusted_log_keys=[real])


def test_anchor_rolled_back(copy: Path) -> None:
    _edit(copy / "anchors.jsonl", lambda objs: [*objs, objs[1]])
    _fails(copy, "anchor at size 2:", "comes after the anchor at size 3: anchors rolled back")


def test_anchors_out_of_order(copy: Path) -> None:
    _edit(copy / "anchors.jsonl", lambda objs: [objs[0], objs[2], objs[1]])
    _fails(copy, "anchor at size 3:", "not consistent with the previous anchor")


def test_checkpoint_from_a_forked_log(bundle: Path, copy: Path) -> None:
    # The log's own key signs a checkpoint of a different history (a fork): same size, other root.
    objs = _lines(copy / "entries.jsonl")
    leaves = [canonicalize(o["entry"]) for o in objs]
    fork = json.loads(leaves[5])
    fork["data"]["call_id"] = "call_forged"
    leaves[5] = canonicalize(fork)
    checkpoints = _lines(copy / "checkpoints.jsonl")
    target = next(cp for cp in checkpoints if cp["size"] > 5)
    signer = AuditKeys(bytes(range(32))).signer(ORIGIN)
    body = note.Checkpoint(ORIGIN, target["size"], merkle.root(leaves[: target["size"]])).format()
    target["note"] = note.sign(body, [signer]).decode()
    _write(copy / "checkpoints.jsonl", checkpoints)
    _fails(copy, f"checkpoint at size {target['size']}:", "log rewritten or forked")


def test_altered_personal_payload(copy: Path) -> None:
    def alter(objs: list[dict[str, Any]]) -> None:
        payload = json.loads(base64.b64decode(objs[0]["payload"]))
        payload["data"]["args"]["to"] = "+13105550999"
        objs[0]["payload"] = base64.b64encode(canonicalize(payload)).decode()

    _edit(copy / "personal.jsonl", alter)
    _fails(copy, "personal payload of entry", "does not match the entry's commitment")


def test_unsigned_tail(copy: Path) -> None:
    def extend(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        extra = json.loads(json.dumps(objs[-1]))
        extra["seq"] = len(objs)
        extra["entry"]["id"] = "ent_extra"
        _rehash(extra)
        return [*objs, extra]

    _edit(copy / "entries.jsonl", extend)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["size"] += 1
    (copy / "bundle.json").write_bytes(canonicalize(manifest) + b"\n")
    _fails(copy, "entry 38:", "not covered by any signed checkpoint")


def test_missing_file_is_named(copy: Path) -> None:
    (copy / "anchors.jsonl").unlink()
    _fails(copy, "anchors.jsonl", "missing")


def test_not_a_bundle(tmp_path: Path) -> None:
    _fails(tmp_path, "no manifest")


TAMPERABLE = [
    "entries.jsonl",
    "personal.jsonl",
    "checkpoints.jsonl",
    "consistency.jsonl",
    "anchors.jsonl",
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(TAMPERABLE), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7)
)
def test_any_flipped_bit_is_detected(
    bundle: Path, tmp_path: Path, name: str, where: float, bit: int
) -> None:
    target = tmp_path / "flipped"
    shutil.copytree(bundle, target)
    try:
        data = bytearray((target / name).read_bytes())
        position = int(where * len(data))
        data[position] ^= 1 << bit
        (target / name).write_bytes(bytes(data))
        with pytest.raises(VerificationError):
            verify_bundle(target)
    finally:
        shutil.rmtree(target)


@pytest.fixture(name="parallel")
def parallel_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify entries in worker processes, 7 lines at a time, even for a small bundle."""
    from corral.audit import verify

    monkeypatch.setattr(verify, "PARALLEL_FROM", 0)
    monkeypatch.setattr(verify, "_CHUNK_LINES", 7)


@pytest.mark.usefixtures("parallel")
def test_parallel_verification_agrees_with_the_serial_one(bundle: Path, copy: Path) -> None:
    from corral.audit import verify

    report = verify_bundle(bundle)
    assert (report.entries, report.erased, report.anchors) == (38, 1, 3)
    _edit(copy / "entries.jsonl", lambda objs: objs[:23] + objs[24:])
    _fails(copy, "entry 23:", "missing or out of order", "holds seq 24")
    assert verify.PARALLEL_FROM == 0
