"""Epoch snapshots: a sweep trial's resumable state persisted once per epoch, not copied.

The engine writes its checkpoint directory (``<run dir>/checkpoint/``: ``state.pt``, ``best.pt``,
the retrieval picture) after every epoch, each file atomically as a new file. Tune then wants a
checkpoint per report, which it copies into the trial's directory. For the demo's full fine-tuning
that copy is 230 MB per epoch per trial (for ViT-B/16 full fine-tuning, about 2.4 GB) written a
second time, and a third copy sits beside it until Tune drops the older one.

Instead, :func:`take` snapshots the checkpoint directory under ``<run dir>/snapshots/epoch_NNNNNN/``
with hard links (no bytes copied: the engine's next write is a new file, so the snapshot keeps the
epoch's version), and Tune is handed a pointer: a directory holding only :data:`POINTER_FILE`
(:func:`write_pointer`), which it copies in microseconds. A restarted trial follows the pointer of
the checkpoint Tune restores (:func:`resolve`) to the snapshot of that epoch, exactly as it would
have found Tune's copy. :func:`prune` keeps the snapshots of the newest two epochs, as Tune keeps
its two newest checkpoints (``num_to_keep=2``) and falls back to the older one when the newer cannot
be read (:func:`iclf.sweep.tune.resume_point`).

A filesystem without hard links gets copies (what Tune did). Nothing here imports Ray.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

from iclf.sweep import spares

SNAPSHOTS_DIR = "snapshots"       # inside a run directory
POINTER_DIR = ".tune-checkpoint"  # inside a run directory: the pointer handed to tune.report
POINTER_FILE = "snapshot.json"    # the only file of the checkpoint Tune keeps
PREFIX = "epoch_"


def snapshot_name(epoch: int) -> str:
    return f"{PREFIX}{int(epoch):06d}"


def snapshot_epoch(path: Path) -> int | None:
    name = Path(path).name
    digits = name[len(PREFIX):]
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # no hard links here (some network filesystems): a copy, as Tune would make
        shutil.copy2(src, dst)


def take(checkpoint_dir: str | Path, snapshots_dir: str | Path, epoch: int) -> Path:
    """Snapshot every finished file of ``checkpoint_dir`` (not the engine's ``.*.tmp``) as
    ``<snapshots_dir>/epoch_NNNNNN``, replacing one an earlier attempt of the same epoch left.
    Built under a temporary name and renamed: a snapshot directory is whole or absent."""
    checkpoint_dir, snapshots_dir = Path(checkpoint_dir), Path(snapshots_dir)
    final = snapshots_dir / snapshot_name(epoch)
    tmp = snapshots_dir / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for item in sorted(checkpoint_dir.iterdir()):
            if item.is_file() and not item.name.startswith("."):
                _link_or_copy(item, tmp / item.name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_pointer(pointer_dir: str | Path, snapshot: str | Path, epoch: int) -> Path:
    """Make ``pointer_dir`` a checkpoint for Tune that names ``snapshot`` (by name: the run
    directory is found from the trial's config, wherever the sweep's storage is mounted)."""
    pointer_dir = Path(pointer_dir)
    if pointer_dir.exists():
        shutil.rmtree(pointer_dir)
    pointer_dir.mkdir(parents=True)
    (pointer_dir / POINTER_FILE).write_text(
        json.dumps({"snapshot": Path(snapshot).name, "epoch": int(epoch)}))
    return pointer_dir


def resolve(checkpoint: str | Path, snapshots_dir: str | Path) -> Path:
    """The directory a Tune checkpoint resumes from: the snapshot its pointer names, or the
    checkpoint itself when it holds the state (a sweep started before snapshots). A pointer that
    cannot be read resolves to a path that does not exist, which the caller reports and skips."""
    checkpoint = Path(checkpoint)
    pointer = checkpoint / POINTER_FILE
    if not pointer.is_file():
        return checkpoint
    try:
        name = json.loads(pointer.read_text())["snapshot"]
    except (ValueError, KeyError, TypeError, OSError):
        return checkpoint / "<unreadable snapshot.json>"
    if not isinstance(name, str) or snapshot_epoch(Path(name)) is None or "/" in name:
        return checkpoint / "<unreadable snapshot.json>"
    return Path(snapshots_dir) / name


def prune(snapshots_dir: str | Path, newest_epoch: int, keep: int = 2,
          recycle: Mapping[str, Path] | None = None) -> int:
    """Remove the snapshots older than the ``keep`` newest epochs up to ``newest_epoch`` (and
    leftovers of interrupted :func:`take` calls); returns how many went.

    ``recycle``: ``{file name: destination}``: such a file of a removed snapshot that no other link
    holds is moved to its destination instead of deleted, for the engine to overwrite with its next
    write (:func:`iclf.engine.checkpoint.save_atomic`'s ``reuse``)."""
    snapshots_dir = Path(snapshots_dir)
    if not snapshots_dir.is_dir():
        return 0
    removed = 0
    for item in sorted(snapshots_dir.iterdir()):
        epoch = snapshot_epoch(item)
        stale_tmp = item.name.startswith(".") and item.name.endswith(".tmp") \
            and not item.name.endswith(f".{os.getpid()}.tmp")
        if (epoch is not None and epoch <= newest_epoch - keep) or stale_tmp:
            for name, destination in (recycle or {}).items() if epoch is not None else ():
                spares.take_over(item / name, Path(destination))
            shutil.rmtree(item, ignore_errors=True)
            removed += 1
    return removed


__all__ = ["take", "write_pointer", "resolve", "prune", "snapshot_name", "snapshot_epoch",
           "SNAPSHOTS_DIR", "POINTER_DIR", "POINTER_FILE"]
