"""Child process of the refresh crash test: refresh one OAuth connection, stop at a step.

``python -m tests.broker._refresh_child DATA_DIR CONNECTION STEP MARKER``: opens the broker of
``DATA_DIR`` (settings as the parent wrote them), refreshes ``CONNECTION`` of tenant
``brightsmile`` over real HTTP, and when the protocol reaches ``STEP`` writes ``MARKER`` and
waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from corral.broker.assembly import open_broker
from corral.broker.oauth import AuditEvents, TokenSource
from corral.core.settings import load_settings


def main(data_dir: str, connection_id: str, step: str, marker: str) -> None:
    settings = load_settings(Path(data_dir) / "corral.toml")

    def report(text: str) -> None:  # atomically: the parent polls for the file
        Path(marker + ".tmp").write_text(text)
        os.replace(marker + ".tmp", marker)

    def observe(reached: str) -> None:
        if reached == step:
            report(reached)
            while True:  # wait for SIGKILL, holding whatever the step holds
                time.sleep(1)

    async def refresh() -> None:
        parts = open_broker(settings)
        vault = parts.broker.vault
        source = TokenSource(vault, parts.http, lease_s=1.0, on_step=observe)
        row = vault.connection("brightsmile", connection_id)
        await source.refresh(row, AuditEvents())
        report("finished")

    asyncio.run(refresh())


if __name__ == "__main__":
    main(*sys.argv[1:5])
