"""Crash safety: SIGKILL a process that appends, at random moments; no acknowledged entry is lost.

A child process (:mod:`tests.audit._crash_child`) appends from several threads and prints each
acknowledged seq with its leaf digest. The parent kills it (after a random number of acks, or
a random time into its run, when commits are in flight), then reopens the store and checks
that every acknowledged seq holds the same leaf, that the tree's stored nodes are exactly those
of its leaves, that checkpoints verify, and that the next process continues the log.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from corral.audit import entries, merkle, note
from corral.audit.log import Sequencer
from corral.audit.store import LogStore
from corral.core.clock import SystemClock
from tests.audit import _backends as b
from tests.audit._backends import store_fixture, store_url_fixture  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
T = b.TENANT
THREADS = 6


def _run_and_kill(
    store_url: b.StoreUrl, round_id: int, after_acks: int, after_s: float, log: Path
) -> dict[int, str]:
    """Start a child, kill it after ``after_acks`` acks and then ``after_s`` seconds more;
    return every ack it printed (seq -> leaf digest)."""
    command = [sys.executable, "-m", "tests.audit._crash_child", store_url.url,
               store_url.schema or "-", str(round_id), str(THREADS)]  # fmt: skip
    lines: list[str] = []
    with log.open("w") as stderr:
        child = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        assert child.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(child.stdout or ()), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while len(lines) < after_acks and child.poll() is None:
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.001)
        time.sleep(after_s)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        reader.join(10)
    assert child.returncode == -signal.SIGKILL, f"child died by itself: {log.read_text()}"
    acked: dict[int, str] = {}
    for line in lines:
        if line.endswith("\n"):  # a line cut by the kill was not fully reported: not counted
            seq, digest = line.split()
            assert int(seq) not in acked, f"seq {seq} acknowledged twice"
            acked[int(seq)] = digest
    return acked


def _check_log(store: LogStore, acked: dict[int, str], where: str) -> int:
    size = store.log_size(T)
    assert size >= max(acked, default=-1) + 1, f"{where}: log of {size} lost acknowledged seqs"
    stored = store.entries(T, 0, size)
    assert [e.seq for e in stored] == list(range(size)), f"{where}: seqs not contiguous"
    for seq, digest in acked.items():
        assert hashlib.sha256(stored[seq].leaf).hexdigest() == digest, f"{where}: seq {seq}"
    for e in stored:  # payloads committed together with their leaves
        parsed = entries.parse_entry(e.leaf)
        assert not isinstance(parsed, entries.UnknownEntry), f"{where}: seq {e.seq}"
        commitment = parsed.personal
        if commitment is None:
            assert e.personal is None and not e.erased, f"{where}: seq {e.seq}"
        else:
            assert e.personal is not None, f"{where}: seq {e.seq} lost its payload"
            assert entries.PersonalPayload.from_bytes(e.personal).matches(commitment)
    leaves = [e.leaf for e in stored]
    expected = b.all_nodes(leaves)
    assert store.nodes(T, list(expected)) == expected, f"{where}: tree nodes differ"
    assert b.stored_node_count(store) == len(expected), f"{where}: stray tree nodes"
    assert store.root(T, size) == merkle.root(leaves)
    verifier = b.signer_for(b.origin()).verifier()
    for stored_checkpoint in store.checkpoints(T):
        checkpoint, _ = note.open_checkpoint(stored_checkpoint.note, b.origin(), verifier)
        assert checkpoint.size <= size
        assert checkpoint.root == store.root(T, checkpoint.size) == stored_checkpoint.root
    return size


def test_sigkill_loses_no_acknowledged_entry(
    store_url: b.StoreUrl, store: LogStore, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    # (acks before the kill, then seconds more): right at the start, early, mid-run, later.
    kill_points = [
        (1, rng.uniform(0, 0.02)),
        (rng.randint(2, 40), 0.0),
        (1, rng.uniform(0.1, 0.3)),
        (rng.randint(100, 400), rng.uniform(0, 0.01)),
    ]
    acked_all: dict[int, str] = {}
    for round_id, (after_acks, after_s) in enumerate(kill_points):
        where = f"seed {seed}, round {round_id}, kill after {after_acks} acks + {after_s:.3f}s"
        acked = _run_and_kill(
            store_url, round_id, after_acks, after_s, tmp_path / f"{round_id}.log"
        )
        assert len(acked) >= after_acks, f"{where}: only {len(acked)} acks"
        reused = set(acked) & set(acked_all)
        assert not reused, f"{where}: seqs acknowledged again after a crash: {sorted(reused)[:5]}"
        acked_all.update(acked)
        _check_log(store, acked_all, where)
    size = store.log_size(T)
    with Sequencer(
        store, deployment=b.DEPLOYMENT, signer_for=b.signer_for, clock=SystemClock()
    ) as sequencer:
        assert sequencer.append(T, b.entry(0, tag="after-")[0]) == size
    _check_log(store, acked_all, "after the crashes")
