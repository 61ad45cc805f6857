"""Disk bounded per trial (iclf.sweep.cleanup): a FINISHED trial keeps its selected weights, config
and metrics; its resumable state goes, Ray's checkpoint directories stay (emptied, with a note);
the selected weights and their MLflow artifact become one file. Real files on disk."""

import os
from pathlib import Path
from types import SimpleNamespace

from iclf.sweep.cleanup import (RELEASED, local_artifact_dir, release_finished, release_trial,
                                share_weights, trial_bytes)


def _write(path: Path, size: int, byte: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(byte * size)
    return path


def _trial(tmp: Path, name: str = "a1") -> tuple[Path, Path]:
    """Ray's trial directory and the engine's run directory of a trial, as a sweep leaves them."""
    trial_dir = tmp / "sweep" / f"trial_{name}"
    run_dir = tmp / "sweep" / "runs" / name
    for ckpt in ("checkpoint_000001", "checkpoint_000002"):
        _write(trial_dir / ckpt / "state.pt", 3000)
        _write(trial_dir / ckpt / "best.pt", 1000)
    for small in ("result.json", "progress.csv", "params.json"):
        _write(trial_dir / small, 10)
    _write(run_dir / "checkpoint" / "state.pt", 3000)
    _write(run_dir / "checkpoint" / "best.pt", 1000, b"w")
    _write(run_dir / "checkpoint" / ".state.pt.123.tmp", 500)
    _write(run_dir / "configs.yaml", 20)
    _write(run_dir / "metrics.jsonl", 30)
    return trial_dir, run_dir


def test_release_keeps_weights_config_and_metrics(tmp_path):
    trial_dir, run_dir = _trial(tmp_path)
    before = trial_bytes([trial_dir, run_dir])
    out = release_trial(trial_dir, run_dir, note="MLflow run abc.")
    assert out.removed == 2 * 4000 + 3000
    for ckpt in ("checkpoint_000001", "checkpoint_000002"):  # Tune checks these exist
        assert [p.name for p in (trial_dir / ckpt).iterdir()] == [RELEASED]
        assert "MLflow run abc." in (trial_dir / ckpt / RELEASED).read_text()
    assert sorted(p.name for p in trial_dir.iterdir() if p.is_file()) == [
        "params.json", "progress.csv", "result.json"]
    assert not (run_dir / "checkpoint" / "state.pt").exists()
    assert (run_dir / "checkpoint" / "best.pt").read_bytes() == b"w" * 1000
    assert (run_dir / "configs.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()
    # an atomic write in progress is left alone until no process of the trial can write
    assert (run_dir / "checkpoint" / ".state.pt.123.tmp").is_file()
    assert release_trial(trial_dir, run_dir, stale_temp_files=True).removed == 500
    assert trial_bytes([trial_dir, run_dir]) < before
    assert release_trial(trial_dir, run_dir).removed == 0  # twice is harmless


def test_weights_shared_with_their_mlflow_artifact_when_identical(tmp_path):
    _, run_dir = _trial(tmp_path)
    art = tmp_path / "mlartifacts" / "r1" / "artifacts"
    logged = _write(art / "checkpoint" / "best.pt", 1000, b"w")
    best = run_dir / "checkpoint" / "best.pt"
    assert trial_bytes([best, art]) == 2000
    assert share_weights(run_dir, art).shared == 1000
    assert os.path.samefile(best, logged) and best.read_bytes() == b"w" * 1000
    assert trial_bytes([best, art]) == 1000            # one inode, counted once
    assert share_weights(run_dir, art).shared == 0     # already one file
    assert not list(best.parent.glob(".*link.tmp"))
    # deleting either place leaves the other whole
    logged.unlink()
    assert best.read_bytes() == b"w" * 1000


def test_weights_not_shared_when_they_differ_or_are_missing(tmp_path):
    _, run_dir = _trial(tmp_path)
    art = tmp_path / "art"
    assert share_weights(run_dir, art).shared == 0                 # nothing logged yet
    _write(art / "checkpoint" / "best.pt", 1000, b"z")             # same size, other bytes
    assert share_weights(run_dir, art).shared == 0
    assert (run_dir / "checkpoint" / "best.pt").read_bytes() == b"w" * 1000
    assert share_weights(None, art).shared == 0 and share_weights(run_dir, None).shared == 0


def test_local_artifact_dir():
    assert local_artifact_dir("/abs/mlartifacts/1/r/artifacts") == Path("/abs/mlartifacts/1/r/artifacts")
    assert local_artifact_dir("file:///abs/a%20b/artifacts") == Path("/abs/a b/artifacts")
    for remote in ("mlflow-artifacts:/1/r/artifacts", "s3://bucket/x", "", None):
        assert local_artifact_dir(remote) is None


def _run(status: str, trial_id: str, run_dir: Path, artifact_uri: str):
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id=f"run-{trial_id}",
                                                artifact_uri=artifact_uri),
                           data=SimpleNamespace(tags={"ray_trial_id": trial_id,
                                                      "run_dir": str(run_dir)}))


def test_end_of_sweep_pass_releases_finished_runs_only(tmp_path):
    done_trial, done_run = _trial(tmp_path, "done")
    failed_trial, failed_run = _trial(tmp_path, "failed")
    art = tmp_path / "mlartifacts" / "done" / "artifacts"
    _write(art / "checkpoint" / "best.pt", 1000, b"w")
    runs = [_run("FINISHED", "done", done_run, str(art)),
            _run("FAILED", "failed", failed_run, str(tmp_path / "none"))]
    out = release_finished(runs, lambda tid: tmp_path / "sweep" / f"trial_{tid}",
                           "ray_trial_id", "run_dir")
    assert out.removed == 2 * 4000 + 3000 + 500 and out.shared == 1000
    assert not (done_run / "checkpoint" / "state.pt").exists()
    assert trial_bytes([done_trial, done_run, art]) <= 1.5 * 1000 + 200
    # a FAILED trial keeps everything: --resume retries it from its last checkpoint
    assert (failed_run / "checkpoint" / "state.pt").is_file()
    assert (failed_trial / "checkpoint_000002" / "state.pt").is_file()
