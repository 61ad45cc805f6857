"""Failures inside trials, with real Ray Tune, the engine and MLflow on SQLite:

* a trial that raises once and a trial whose process exits hard once (``os._exit``) are both retried
  from their last checkpoint, reopen their MLflow run (no duplicate run) and log no epoch twice, even
  though the failure came after MLflow had logged an epoch that the checkpoint did not have yet;
* a NaN loss fails that trial only: the other trial, the sweep and the parent run finish.
"""

import functools
import json
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

import ray.cloudpickle  # noqa: E402

from iclf.sweep.cli import main  # noqa: E402
from iclf.sweep.spec import load_spec  # noqa: E402
from iclf.sweep.tune import run_sweep  # noqa: E402
from tiny_sweep import sweep_runs, write_tiny_spec  # noqa: E402

# The injected hook below runs inside Ray workers, which cannot import this test module by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def once_per_trial(marker_dir: str, trial_id: str, first: str, then: str) -> str | None:
    """The fault a trial injects, once: ``first`` for the first trial to get here, ``then`` for the
    others; None when this trial already injected its fault (its retry)."""
    marker = Path(marker_dir) / trial_id
    if marker.exists():
        return None
    try:
        os.close(os.open(Path(marker_dir) / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        kind = first
    except FileExistsError:
        kind = then
    marker.write_text(kind)
    return kind


def crash_once(marker_dir: str, epoch: int, trial_id: str) -> None:
    """At epoch 2, once per trial: the first trial there raises, the second exits the process hard.
    Called after MLflow logged the epoch and before Tune got its checkpoint."""
    kind = once_per_trial(marker_dir, trial_id, "raise", "exit") if epoch == 2 else None
    if kind is None:
        return
    if kind == "raise":
        raise RuntimeError("injected failure")
    os._exit(1)


@pytest.mark.slow
def test_crash_and_hard_exit_are_retried_from_checkpoint(tmp_path, ray_local):
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = load_spec(write_tiny_spec(tmp_path, "faults", "lora.rank: {grid: [0, 4]}", epochs=3))
    outcome = run_sweep(spec, epoch_hook=functools.partial(crash_once, str(markers)), verbose=0)
    assert outcome.completed and (outcome.finished, outcome.failed) == (2, 0)
    kinds = sorted(p.read_text() for p in markers.iterdir() if p.name != "first")
    assert kinds == ["exit", "raise"]
    client, parents, kids = sweep_runs(tmp_path, "faults")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == 2  # the retries reopened their runs
    for run in kids:
        rid = run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["retries"] == "1"
        for key in ("epoch", "val/R1", "val/mAP", "train/loss"):
            assert [m.step for m in client.get_metric_history(rid, key)] == [1, 2, 3], key
        assert len(client.get_metric_history(rid, "test/R1")) == 1
        # The engine restarted from the epoch-1 checkpoint Tune handed back.
        events = [json.loads(line) for line in
                  (Path(run.data.tags["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        starts = [e["resumed_from_epoch"] for e in events if e["event"] == "start"]
        assert starts == [0, 1]


@pytest.mark.slow
def test_nan_fails_only_its_trial(tmp_path, ray_local, capsys):
    spec = write_tiny_spec(tmp_path, "nan", "losses.temperature: {grid: [0.02, 1.0e-40]}",
                           epochs=2)
    assert main([str(spec), "--quiet"]) == 1  # completed, with a failed trial
    assert "1 finished, 1 failed of 2 trials" in capsys.readouterr().out
    client, parents, kids = sweep_runs(tmp_path, "nan")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["trials_failed"] == "1"
    by_key = {r.data.tags["config_key"]: r for r in kids}
    assert set(by_key) == {"losses.temperature=0.02", "losses.temperature=1e-40"}
    good, bad = by_key["losses.temperature=0.02"], by_key["losses.temperature=1e-40"]
    assert good.info.status == "FINISHED" and "test/R1" in good.data.metrics
    assert bad.info.status == "FAILED"
    assert "non-finite loss" in bad.data.tags["error"] and bad.data.tags["retries"] == "1"
    assert "test/R1" not in bad.data.metrics


def break_checkpoints(storage: str, marker_dir: str, epoch: int, trial_id: str) -> None:
    """At epoch 3, once per trial, after Tune recorded the checkpoints of epochs 1 and 2: the first
    trial there truncates the state.pt of the newest one's epoch snapshot, the second of both; then
    it fails."""
    from iclf.sweep import snapshot

    kind = once_per_trial(marker_dir, trial_id, "newest", "all") if epoch == 3 else None
    if kind is None:
        return
    kept = sorted(Path(storage).glob(f"*{trial_id}*/checkpoint_*"))
    assert len(kept) == 2, kept
    snapshots = Path(storage) / "runs" / trial_id / snapshot.SNAPSHOTS_DIR
    for ckpt_dir in kept[-1:] if kind == "newest" else kept:
        assert [p.name for p in ckpt_dir.iterdir()] == [snapshot.POINTER_FILE]  # no copy
        state = snapshot.resolve(ckpt_dir, snapshots) / "state.pt"
        state.write_bytes(state.read_bytes()[:100])  # truncated
    raise RuntimeError("injected failure after breaking checkpoints")


@pytest.mark.slow
def test_a_broken_checkpoint_is_skipped_for_an_older_one_or_scratch(tmp_path, ray_local):
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = load_spec(write_tiny_spec(tmp_path, "broken", "lora.rank: {grid: [0, 4]}", epochs=3))
    hook = functools.partial(break_checkpoints, str(tmp_path / "ray" / "broken"), str(markers))
    outcome = run_sweep(spec, epoch_hook=hook, verbose=0)
    assert outcome.completed and (outcome.finished, outcome.failed) == (2, 0)
    client, _, kids = sweep_runs(tmp_path, "broken")
    kind = {m.name: m.read_text() for m in markers.iterdir() if m.name != "first"}
    assert sorted(kind.values()) == ["all", "newest"]
    for run in kids:
        rid, tags = run.info.run_id, run.data.tags
        assert run.info.status == "FINISHED" and tags["retries"] == "1"
        events = [json.loads(line) for line in
                  (Path(tags["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        starts = [e["resumed_from_epoch"] for e in events if e["event"] == "start"]
        if kind[tags["ray_trial_id"]] == "newest":  # the epoch-1 checkpoint Tune kept
            assert starts == [0, 1] and tags["resumed_from"] == "checkpoint_000000"
            assert tags["skipped_checkpoints"].startswith("checkpoint_000001: ")
        else:  # nothing readable: from scratch, not the same broken file again
            assert starts == [0, 0] and tags["resumed_from"] == "scratch"
            assert tags["skipped_checkpoints"].count("not a readable checkpoint") == 2
        for key in ("epoch", "val/R1", "train/loss"):
            assert [m.step for m in client.get_metric_history(rid, key)] == [1, 2, 3], key
        assert len(client.get_metric_history(rid, "test/R1")) == 1


@pytest.mark.slow
def test_a_sweep_whose_every_trial_failed_ends_without_a_report(tmp_path, ray_local, capsys):
    spec = write_tiny_spec(tmp_path, "allnan", "losses.temperature: {grid: [1.0e-40]}", epochs=1,
                           extra="max_failures: 0\n")
    assert main([str(spec), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "0 finished, 1 failed of 1 trials" in captured.out and "Traceback" not in captured.err
    _, parents, kids = sweep_runs(tmp_path, "allnan")
    assert parents[0].info.status == "FINISHED" and kids[0].info.status == "FAILED"
    assert not (tmp_path / "ray" / "allnan" / "report").exists()
