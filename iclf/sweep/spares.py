"""Spare files: the state files of finished trials, kept for the running ones to overwrite.

A sweep trial writes its state (weights and Adam moments: 172 MB for the demo's full fine-tuning,
about 2.4 GB for ViT-B/16) after every epoch, each time as a new file. On a virtual machine whose
freed memory goes back to the host (virtio-balloon free page reporting, as on the machines this
project is developed on), every page of a new file is a fresh allocation that faults on the host:
between a demo sweep's epochs such a write took 0.3-2 s, against 0.03-0.2 s when the same bytes
overwrite a file whose pages are still cached (docs/benchmarks.md).

So a finished trial's state files are not deleted but moved into the sweep's pool
(``<sweep>/runs/.spares/``, at most ``limit`` files, each inode once: :func:`deposit`); a running
trial takes one (:func:`claim`) as its checkpoint directory's spare, which the engine's next state
write overwrites in place (:func:`iclf.engine.checkpoint.save_atomic`'s ``reuse``), and its own
pruned snapshots' states become its next spares (:func:`iclf.sweep.snapshot.prune`). A spare is
never read: it is a dot-name the snapshots skip, renamed (atomically, so one claimant gets it) and
overwritten whole before it is renamed into place. The pool is removed when the sweep ends
(:func:`clear`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

POOL_DIR = ".spares"  # beside the trials' run directories
PREFIX = "spare-"


def pool_of(run_dir: str | Path) -> Path:
    """The pool of the sweep a trial's run directory (``<sweep>/runs/<trial>``) belongs to."""
    return Path(run_dir).parent / POOL_DIR


def deposit(files: Iterable[Path], pool: Path, limit: int) -> int:
    """Move ``files`` (those that exist, each inode once) into ``pool`` until it holds ``limit``;
    returns how many moved. The files left are the caller's to remove."""
    try:
        pool.mkdir(exist_ok=True)
        held = sum(1 for _ in pool.glob(PREFIX + "*"))
    except OSError:
        return 0
    seen: set[tuple[int, int]] = set()
    moved = 0
    for path in files:
        if held + moved >= limit:
            break
        try:
            st = path.stat()
            if not path.is_file() or path.is_symlink() or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            os.replace(path, pool / f"{PREFIX}{st.st_dev}-{st.st_ino}")
            moved += 1
        except OSError:  # gone meanwhile, another filesystem: the caller removes it
            continue
    return moved


def take_over(path: Path, destination: Path) -> bool:
    """Move ``path`` to ``destination`` when it is a file no other link holds (never one a run
    directory or a kept snapshot still shares); the rename is atomic: of two takers, one gets it.
    False when it was not moved (a spare is an optimisation: the engine then writes a new file)."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_nlink != 1:
            return False
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)
        return True
    except OSError:  # gone meanwhile (another taker), or no room to rename
        return False


def claim(pool: Path, destination: Path) -> bool:
    """Move one spare of ``pool`` to ``destination`` (:func:`take_over`: not while a snapshot being
    removed still links it); False when there is none."""
    try:
        candidates = sorted(pool.glob(PREFIX + "*"))
    except OSError:
        return False
    return any(take_over(spare, destination) for spare in candidates)


def clear(pool: Path) -> None:
    shutil.rmtree(pool, ignore_errors=True)


__all__ = ["pool_of", "deposit", "claim", "take_over", "clear", "POOL_DIR"]
