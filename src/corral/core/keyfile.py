"""Secret seed files: created once with mode 0600, refused when others can read them.

The audit seed, the broker's delegation key and control's approval key are each one small
file in the data directory. A leaked seed lets anyone sign as corral, so a file that group or
others may read is refused rather than used.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from corral.core.errors import ConfigError


def check_private(path: Path) -> None:
    """Refuse ``path`` if group or others have any access to it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600, parent 0700) with ``data``, fsynced; never overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_seed(
    path: Path, size: int = 32, *, entropy: Callable[[int], bytes] = os.urandom
) -> bytes:
    """The seed in ``path``, created from ``entropy(size)`` if the file does not exist."""
    if path.exists():
        check_private(path)
        seed = path.read_bytes()
        if len(seed) != size:
            raise ConfigError(f"{path} must hold {size} bytes, found {len(seed)}")
        return seed
    seed = entropy(size)
    write_private(path, seed)
    return seed
