"""The process that ``test_log_crash.py`` kills: appends forever and reports every ack.

Usage: ``python -m tests.audit._crash_child URL SCHEMA|- ROUND THREADS``. Several threads append
to one tenant log; each acknowledged append is printed as ``<seq> <sha256(leaf) hex>`` and
flushed at once, so a line the parent read is an append the sequencer acknowledged before the
process died.
"""

from __future__ import annotations

import hashlib
import sys
import threading

from corral.audit.log import Sequencer
from corral.audit.store import LogStore
from corral.core.clock import SystemClock
from tests.audit import _backends as b


def main(argv: list[str]) -> None:
    url, schema, round_id, threads = argv[0], argv[1], argv[2], int(argv[3])
    store = LogStore.from_url(url, schema=None if schema == "-" else schema)
    sequencer = Sequencer(
        store,
        deployment=b.DEPLOYMENT,
        signer_for=b.signer_for,
        clock=SystemClock(),
        checkpoint_interval_s=0.05,  # checkpoints too are written all the time
    )
    out = threading.Lock()

    def appender(k: int) -> None:
        for i in range(1_000_000):
            entry, personal = b.entry(i, personal=i % 3 == 0, tag=f"r{round_id}-t{k}-")
            seq = sequencer.append(b.TENANT, entry, personal)
            line = f"{seq} {hashlib.sha256(entry.leaf()).hexdigest()}\n"
            with out:
                sys.stdout.write(line)
                sys.stdout.flush()

    workers = [threading.Thread(target=appender, args=(k,), daemon=True) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()  # never: the parent kills this process


if __name__ == "__main__":
    main(sys.argv[1:])
