"""Small file helpers shared by the layers."""

from __future__ import annotations

import fcntl
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable

# The most one write() call hands the kernel. On the Linux 6.x machines this project runs on, one
# write of 2 MiB or more into the page cache ran at about 80 MB/s (allocation of large folios),
# 1 MiB pieces of the same buffer at over 3 GB/s: torch.save of the demo's 172 MB training state
# took 1.8 s in one piece per tensor, 0.12 s in 1 MiB pieces (docs/benchmarks.md).
WRITE_CHUNK = 1 << 20


class ChunkedWriter(io.RawIOBase):
    """A writable binary stream over ``fh`` that passes every write on in pieces of at most
    :data:`WRITE_CHUNK` bytes (``torch.save`` writes each tensor's storage in one call)."""

    def __init__(self, fh: BinaryIO):
        super().__init__()
        self._fh = fh

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), WRITE_CHUNK):
            self._fh.write(view[start:start + WRITE_CHUNK])
        return len(view)

    def flush(self) -> None:
        self._fh.flush()


def write_atomic(path: str | Path, write: Callable[[str], object]) -> Path:
    """``write(tmp)`` fills a new file beside ``path`` (a dot-name with ``path``'s suffix, for
    writers that pick a format by it), which is then renamed over
    ``path``: readers see the old file or the new one whole, and a file hard-linked elsewhere (a
    sweep's epoch snapshot) is never written in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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
