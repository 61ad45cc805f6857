"""Where a restarted trial resumes (iclf.sweep.tune.resume_point) and the epoch snapshots Tune's
checkpoints point at (iclf.sweep.snapshot). Tune's newest checkpoint unless its state cannot be
read, then the newest older one. A sweep trial's state.pt is not flushed to the disk, so a file
damaged by a power loss must be recognised, not loaded. Real files, hard links, Tune's layout."""

import os
import shutil
from pathlib import Path

import torch

from iclf.engine import checkpoint as ckpt
from iclf.sweep import snapshot
from iclf.sweep.tune import resume_point


def _engine_epoch(run_dir: Path, epoch: int, best: bool = True) -> None:
    """What the engine writes at the end of an epoch: state.pt (and best.pt when it improved)."""
    directory = run_dir / "checkpoint"
    ckpt.save_atomic({"model": {"w": torch.full((500, 100), float(epoch))}, "optimizer": {},
                      "scheduler": {}, "rng": {}, "progress": {"epoch": epoch}},
                     directory / ckpt.STATE_FILE, durable=False,
                     reuse=directory / ckpt.SPARE_FILE)
    if best:
        ckpt.save_atomic({"w": torch.full((500, 100), float(epoch))}, directory / ckpt.BEST_FILE)


def _tune_epoch(run_dir: Path, trial_dir: Path, epoch: int) -> Path:
    """What the trial does after it (TuneReporter.on_epoch): snapshot, pointer, Tune's copy."""
    snap = snapshot.take(run_dir / "checkpoint", run_dir / snapshot.SNAPSHOTS_DIR, epoch)
    pointer = snapshot.write_pointer(run_dir / snapshot.POINTER_DIR, snap, epoch)
    kept = trial_dir / f"checkpoint_{epoch - 1:06d}"
    shutil.copytree(pointer, kept)  # Tune's persist_current_checkpoint copies the directory
    snapshot.prune(run_dir / snapshot.SNAPSHOTS_DIR, epoch,
                   recycle={ckpt.STATE_FILE: run_dir / "checkpoint" / ckpt.SPARE_FILE})
    return kept


def _trial(tmp_path: Path, epochs: int) -> tuple[Path, Path, Path]:
    """A trial after ``epochs`` epochs: Tune's newest checkpoint, the run's snapshots directory and
    the trial's Ray directory."""
    run_dir, trial_dir = tmp_path / "runs" / "t1", tmp_path / "trial_t1"
    for epoch in range(1, epochs + 1):
        _engine_epoch(run_dir, epoch)
        newest = _tune_epoch(run_dir, trial_dir, epoch)
    return newest, run_dir / snapshot.SNAPSHOTS_DIR, trial_dir


def _damage(path: Path) -> None:
    with open(path, "r+b") as fh:  # zeros inside the tensor data, the zip directory intact
        fh.seek(path.stat().st_size // 2)
        fh.write(bytes(4096))


def test_snapshots_share_bytes_keep_their_epoch_and_only_the_two_newest_stay(tmp_path):
    run_dir, trial_dir = tmp_path / "runs" / "t1", tmp_path / "trial_t1"
    for epoch in (1, 2, 3):
        _engine_epoch(run_dir, epoch, best=epoch != 3)
        kept = _tune_epoch(run_dir, trial_dir, epoch)
    snaps = run_dir / snapshot.SNAPSHOTS_DIR
    assert sorted(p.name for p in snaps.iterdir()) == ["epoch_000002", "epoch_000003"]
    assert [p.name for p in kept.iterdir()] == [snapshot.POINTER_FILE]  # Tune copies a pointer
    # epoch 3's snapshot is the run directory's files, not a copy of them
    for name in (ckpt.STATE_FILE, ckpt.BEST_FILE):
        assert os.path.samefile(snaps / "epoch_000003" / name, run_dir / "checkpoint" / name)
    # epoch 2's snapshot kept epoch 2's state although state.pt was rewritten since
    assert ckpt.load(snaps / "epoch_000002" / ckpt.STATE_FILE)["progress"] == {"epoch": 2}
    assert os.path.samefile(snaps / "epoch_000002" / ckpt.BEST_FILE,
                            snaps / "epoch_000003" / ckpt.BEST_FILE)  # best.pt unchanged at 3
    found, skipped = resume_point(kept, snaps)
    assert found == (kept, snaps / "epoch_000003") and skipped == []


def test_a_pruned_state_is_overwritten_by_a_later_epoch_never_a_kept_one(tmp_path):
    """The state of a pruned snapshot (no other link) becomes the spare the engine overwrites with
    the next epoch's state: the same inode serves epochs 1, 4, 7, ...; every kept snapshot still
    holds its own epoch's state, and a state still linked elsewhere is never recycled."""
    run_dir, trial_dir = tmp_path / "runs" / "t1", tmp_path / "trial_t1"
    checkpoint = run_dir / "checkpoint"
    snaps = run_dir / snapshot.SNAPSHOTS_DIR
    inodes = {}
    for epoch in range(1, 8):
        _engine_epoch(run_dir, epoch, best=epoch % 2 == 1)
        inodes[epoch] = (checkpoint / ckpt.STATE_FILE).stat().st_ino
        _tune_epoch(run_dir, trial_dir, epoch)
        for kept in snaps.iterdir():
            state = ckpt.load(kept / ckpt.STATE_FILE)
            assert state["progress"] == {"epoch": snapshot.snapshot_epoch(kept)}
            assert torch.equal(state["model"]["w"],
                               torch.full((500, 100), float(state["progress"]["epoch"])))
        if epoch >= 3:  # epoch-2's snapshot was pruned: its state is the spare
            assert (checkpoint / ckpt.SPARE_FILE).stat().st_nlink == 1
    assert inodes[1] == inodes[4] == inodes[7] and inodes[2] == inodes[5]
    assert len({inodes[1], inodes[2], inodes[3]}) == 3
    # a pruned snapshot whose state another link still holds: deleted, not recycled
    (checkpoint / ckpt.SPARE_FILE).unlink()
    os.link(snaps / "epoch_000006" / ckpt.STATE_FILE, tmp_path / "elsewhere.pt")
    snapshot.prune(snaps, 8, recycle={ckpt.STATE_FILE: checkpoint / ckpt.SPARE_FILE})
    assert not (checkpoint / ckpt.SPARE_FILE).exists()
    assert ckpt.load(tmp_path / "elsewhere.pt")["progress"] == {"epoch": 6}


def test_a_damaged_newest_state_falls_back_to_the_older_epoch(tmp_path):
    newest, snaps, trial_dir = _trial(tmp_path, 2)
    _damage(snaps / "epoch_000002" / ckpt.STATE_FILE)
    found, skipped = resume_point(newest, snaps)
    assert found == (trial_dir / "checkpoint_000000", snaps / "epoch_000001")
    assert len(skipped) == 1 and skipped[0].startswith("checkpoint_000001: ")
    assert "CRC-32" in skipped[0]
    assert ckpt.load(found[1] / ckpt.STATE_FILE)["progress"] == {"epoch": 1}


def test_a_damaged_best_file_or_a_lost_snapshot_disqualifies_its_checkpoint(tmp_path):
    newest, snaps, _ = _trial(tmp_path, 2)
    best = snaps / "epoch_000002" / ckpt.BEST_FILE
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    best.write_bytes(bytes(data))
    shutil.rmtree(snaps / "epoch_000001")
    found, skipped = resume_point(newest, snaps)
    assert found is None and len(skipped) == 2
    assert "best.pt" in skipped[0] and "CRC-32" in skipped[0]
    assert "its snapshot is gone" in skipped[1]


def test_checkpoints_holding_the_state_themselves_still_resume(tmp_path):
    """Sweeps started before snapshots: Tune's checkpoints are full copies."""
    run_dir, trial_dir = tmp_path / "runs" / "t1", tmp_path / "trial_t1"
    _engine_epoch(run_dir, 1)
    full = trial_dir / "checkpoint_000000"
    shutil.copytree(run_dir / "checkpoint", full)
    found, skipped = resume_point(full, run_dir / snapshot.SNAPSHOTS_DIR)
    assert found == (full, full) and skipped == []


def test_a_pointer_naming_anything_but_a_snapshot_is_refused(tmp_path):
    for text in ('{"snapshot": "../../etc"}', "not json", '{"snapshot": "epoch_x"}'):
        kept = tmp_path / "checkpoint_000000"
        kept.mkdir(exist_ok=True)
        (kept / snapshot.POINTER_FILE).write_text(text)
        found, skipped = resume_point(kept, tmp_path / "snapshots")
        assert found is None and "snapshot" in skipped[0], text
