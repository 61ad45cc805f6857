"""Small file helpers shared by the layers."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def lock_beside(path: str | Path):
    """An exclusive lock on ``<path>.lock`` for the duration of the block: processes (on one
    machine, or on a filesystem with working ``flock``) that create the same file take turns."""
    path = Path(path)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
