"""Random bytes from the kernel, read 4 KiB at a time.

``os.urandom`` is a system call that releases the GIL; on a busy service whose writer threads
hold the GIL, every release costs the event loop a wait of up to the switch interval (5 ms) to
get it back. Ids and audit salts are drawn a few times per call, so reading the kernel's
randomness in blocks and handing out slices removes those waits without weakening anything:
the bytes are the kernel's CSPRNG output, each handed out once. The buffer is dropped in a
forked child, so parent and child never share bytes. (No library offers a buffered, fork-safe
``urandom``; ``secrets`` and ``random.SystemRandom`` call ``os.urandom`` each time.)

>>> len(urandom(10)), urandom(16) != urandom(16)
(10, True)
"""

from __future__ import annotations

import os
import threading

__all__ = ["urandom"]

_BLOCK = 4096
_lock = threading.Lock()
_buffer = bytearray()


def urandom(size: int) -> bytes:
    """``size`` random bytes, each handed out once (larger requests go to the kernel)."""
    if size > _BLOCK // 4:
        return os.urandom(size)
    with _lock:
        if len(_buffer) < size:
            _buffer[:] = os.urandom(_BLOCK)
        out = bytes(_buffer[:size])
        del _buffer[:size]
    return out


def _forget() -> None:
    global _lock
    _lock = threading.Lock()
    _buffer.clear()


os.register_at_fork(after_in_child=_forget)
