"""Checkpoints: written atomically, holding tensors and plain data only, loaded with weights_only.

Every load checks the CRC-32 that ``torch.save`` writes for each record of its zip archive (torch
itself never checks them): a file damaged after it was written (a write torn by a power loss, a bad
disk) is refused with a :class:`CheckpointError`, never loaded as other weights.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from iclf.files import ChunkedWriter

STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
# a pruned sweep state kept to be overwritten by the next one (save_atomic(reuse=...)); a dot-name:
# never snapshotted, never read as a checkpoint
SPARE_FILE = ".state.pt.spare"


class CheckpointError(RuntimeError):
    pass


def save_atomic(obj: Any, path: str | Path, *, durable: bool = True,
                reuse: str | Path | None = None) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    ``durable``: flush the file to the disk before the rename, so that after a power loss ``path``
    holds the old or the new checkpoint whole. Without it a crash of the process still leaves one
    or the other; a power loss may leave a damaged file, which :func:`load` refuses. Only a file
    with a fallback skips it: a sweep trial's state, whose older epoch snapshot a damaged one falls
    back to (:func:`iclf.sweep.tune.resume_point`).

    ``reuse``: a file nothing needs any more (:data:`SPARE_FILE`, a sweep's pruned state), when it
    exists: it becomes the temporary file and is overwritten in place, then cut to length. Its
    pages in the page cache are written again instead of new ones allocated: on a virtual machine
    whose freed memory goes back to the host (free page reporting), new pages cost a host fault
    each, and a fresh 172 MB state took 0.3-2 s between a sweep's epochs against 0.03-0.2 s
    overwritten (docs/benchmarks.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = "wb"
    if reuse is not None:
        try:
            os.replace(reuse, tmp)
            mode = "r+b"
        except FileNotFoundError:
            pass
    try:
        with open(tmp, mode) as fh:
            torch.save(obj, ChunkedWriter(fh))
            fh.truncate()  # at the end of what was written: a longer old file's tail goes
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def damage(path: str | Path) -> str | None:
    """Why the zip records of a checkpoint fail their CRC-32 check, or None when they pass (and for
    torch's legacy, non-zip format, which carries no checksums)."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"damaged ({exc})"
    return f"record {bad!r} fails its CRC-32 check (the file changed after it was written)" \
        if bad is not None else None


def load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    damaged = damage(path)
    if damaged is not None:
        raise CheckpointError(f"{path}: not a readable checkpoint: {damaged}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None


def unreadable(directory: str | Path) -> str | None:
    """Why the checkpoint directory cannot resume a run (a missing, truncated or foreign
    ``state.pt``, or a broken ``best.pt`` beside it), or None when it can."""
    directory = Path(directory)
    try:
        state = load(directory / STATE_FILE)
        if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "rng",
                                                "progress"} <= set(state):
            return f"{directory / STATE_FILE}: not a training state"
        if (directory / BEST_FILE).exists():
            load(directory / BEST_FILE)
    except CheckpointError as exc:
        return str(exc)
    return None


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (adapters, new modules, unfrozen backbone parts), detached."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor],
                              source: str | Path = "<checkpoint>") -> None:
    """Load weights saved by :func:`trainable_state_dict`; every key must be a trainable parameter."""
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the model built from the config "
            f"(missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]})")
    with torch.no_grad():
        for n, t in sd.items():
            if params[n].shape != t.shape:
                raise CheckpointError(f"{source}: {n} has shape {tuple(t.shape)}, "
                                      f"the model wants {tuple(params[n].shape)}")
            params[n].copy_(t)
