"""Disk bounded per trial: what a finished trial keeps, and when the rest goes.

A trial's resumable state is ``checkpoint/state.pt`` in its run directory (``<sweep>/runs/<id>/``),
the snapshots of its two newest epochs beside it (``snapshots/``, :mod:`iclf.sweep.snapshot`) and
Ray's checkpoints pointing at them (``<sweep>/trial_<id>/checkpoint_NNNNNN/``, the last
``num_to_keep``; in sweeps started before snapshots, full copies). Once the trial's MLflow run is
FINISHED nothing can need them:

* Tune never runs a TERMINATED trial again (``--resume`` included);
* a trial that Tune restarts all the same, because the driver died after the trial finished but
  before Tune saved its experiment state, finds its FINISHED run and reports it again without
  reading a checkpoint (:func:`iclf.sweep.tune.run_trial`); Tune only checks that the directory of
  the checkpoint it restores from exists, so those directories stay, emptied, with a note
  (:data:`RELEASED`) saying where the results are;
* an ASHA-stopped trial is evaluated on test after fit from its run directory's ``best.pt`` and
  ``configs.yaml``, which stay.

So a finished trial keeps the trainable weights of its selected checkpoint (``best.pt``), its
config (``configs.yaml``) and its metrics (``metrics.jsonl``, Tune's ``result.json`` and
``progress.csv``), and :func:`release_trial` removes the rest. FAILED trials keep everything:
``--resume`` retries them from their last checkpoint.

The selected weights are also an MLflow artifact of the trial's run. When the artifact store is a
local directory on the same filesystem (the SQLite default, ``runs/mlartifacts``),
:func:`share_weights` makes the run directory's ``best.pt`` a hard link to that copy after checking
that the two are byte-identical: one file on disk, reachable from both places, and deleting either
place leaves the other whole.

The sweep driver calls :func:`release_trial` when Tune reports a trial complete and its run is
closed FINISHED, and :func:`release_finished` when the sweep ends, after the test evaluation of
ASHA-stopped trials: a second pass over every FINISHED run that also catches what a stopped trial's
process wrote after its stop, and trials finished under an earlier driver. Nothing here imports Ray.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from iclf.engine.checkpoint import BEST_FILE, SPARE_FILE, STATE_FILE
from iclf.sweep.snapshot import POINTER_DIR, SNAPSHOTS_DIR

#: The note left in an emptied Ray checkpoint directory of a finished trial.
RELEASED = "RELEASED.txt"
CHECKPOINT_DIR = "checkpoint"   # the engine's checkpoint directory inside a run directory


@dataclass
class Released:
    """What a release removed or shared (bytes)."""

    removed: int = 0
    shared: int = 0

    def __iadd__(self, other: "Released") -> "Released":
        self.removed += other.removed
        self.shared += other.shared
        return self


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(path: Path) -> int:
    try:
        size = _size(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return size
    except FileNotFoundError:
        return 0


def release_trial(trial_dir: str | Path | None, run_dir: str | Path | None, *,
                  note: str = "", stale_temp_files: bool = False,
                  spare_pool: Path | None = None, spare_limit: int = 0) -> Released:
    """Remove a FINISHED trial's resumable state: the contents of Ray's checkpoint directories
    under ``trial_dir`` (each left empty but for the :data:`RELEASED` note), ``state.pt`` in
    ``run_dir``'s checkpoint directory and the epoch snapshots. ``best.pt``, ``configs.yaml`` and the metrics stay.
    ``stale_temp_files``: also remove the engine's unfinished atomic writes (``.*.tmp``) there; only
    once no process of the trial can still be writing (after fit). ``spare_pool``: its state files
    go there first, up to ``spare_limit`` files in the pool, for running trials to overwrite
    (:mod:`iclf.sweep.spares`)."""
    out = Released()
    if trial_dir is not None and Path(trial_dir).is_dir():
        for ckpt in sorted(Path(trial_dir).glob("checkpoint_*")):
            if not ckpt.is_dir():
                continue
            for item in ckpt.iterdir():
                if item.name != RELEASED:
                    out.removed += _remove(item)
            marker = ckpt / RELEASED
            if not marker.is_file():
                marker.write_text(
                    "This trial finished: its resumable state was removed to bound the sweep's "
                    "disk use (iclf.sweep.cleanup). Its selected weights, config and metrics are in "
                    f"its run directory and its MLflow run.{(' ' + note) if note else ''}\n")
    if run_dir is not None:
        ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
        if spare_pool is not None and spare_limit > 0:
            from iclf.sweep import spares

            states = [ckpt_dir / STATE_FILE, ckpt_dir / SPARE_FILE,
                      *sorted((Path(run_dir) / SNAPSHOTS_DIR).glob(f"*/{STATE_FILE}"))]
            spares.deposit(states, spare_pool, spare_limit)
        out.removed += _remove(ckpt_dir / STATE_FILE)
        out.removed += _remove(ckpt_dir / SPARE_FILE)  # a pruned state kept to be overwritten
        # the epoch snapshots Tune's pointers name, and the last pointer (iclf.sweep.snapshot)
        out.removed += _remove(Path(run_dir) / SNAPSHOTS_DIR)
        out.removed += _remove(Path(run_dir) / POINTER_DIR)
        if stale_temp_files and ckpt_dir.is_dir():
            for tmp in ckpt_dir.glob(".*.tmp"):
                out.removed += _remove(tmp)
    return out


def local_artifact_dir(artifact_uri: str | None) -> Path | None:
    """The directory of a run's artifacts when the store is a local filesystem, else None."""
    if not artifact_uri:
        return None
    if artifact_uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(artifact_uri).path))
    if artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None  # mlflow-artifacts:, s3:, ...: the server's


def share_weights(run_dir: str | Path | None, artifact_dir: str | Path | None) -> Released:
    """Make ``<run_dir>/checkpoint/best.pt`` a hard link to the run's MLflow artifact
    ``<artifact_dir>/checkpoint/best.pt`` when both exist on one filesystem with the same bytes
    (atomically: a link under a temporary name renamed over ``best.pt``)."""
    if run_dir is None or artifact_dir is None:
        return Released()
    best = Path(run_dir) / CHECKPOINT_DIR / BEST_FILE
    logged = Path(artifact_dir) / CHECKPOINT_DIR / BEST_FILE
    try:
        a, b = best.stat(), logged.stat()
    except FileNotFoundError:
        return Released()
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) or a.st_dev != b.st_dev:
        return Released()
    if a.st_size != b.st_size or not filecmp.cmp(best, logged, shallow=False):
        return Released()
    tmp = best.with_name(f".{BEST_FILE}.{os.getpid()}.link.tmp")
    try:
        os.link(logged, tmp)
        os.replace(tmp, best)
    except OSError:  # a filesystem without hard links: two copies, as before
        tmp.unlink(missing_ok=True)
        return Released()
    return Released(shared=a.st_size)


def release_finished(runs: Iterable[Any], trial_dir: Callable[[str], Path | None],
                     trial_tag: str, run_dir_tag: str) -> Released:
    """The end-of-sweep pass: every FINISHED run's trial released (its stale temporary files too)
    and its weights shared with its MLflow artifact. ``runs``: the sweep's child runs (MLflow
    entities); ``trial_dir(trial_id)``: the trial's Ray directory."""
    out = Released()
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        tags = run.data.tags
        run_dir = tags.get(run_dir_tag)
        trial_id = tags.get(trial_tag)
        out += release_trial(trial_dir(trial_id) if trial_id else None, run_dir,
                             note=f"MLflow run {run.info.run_id}.", stale_temp_files=True)
        out += share_weights(run_dir, local_artifact_dir(run.info.artifact_uri))
    return out


def trial_bytes(paths: Iterable[str | Path]) -> int:
    """Bytes on disk of every file under ``paths``, each inode counted once (hard links share)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else (root.rglob("*") if root.is_dir() else [])
        for f in files:
            if f.is_file() and not f.is_symlink():
                st = f.stat()
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


__all__ = ["release_trial", "release_finished", "share_weights", "local_artifact_dir",
           "trial_bytes", "Released", "RELEASED"]
