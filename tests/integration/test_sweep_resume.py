"""The sweep driver killed mid-sweep and continued with ``--resume``, with real Ray Tune, the engine
and MLflow on SQLite.

``python -m iclf.sweep.cli SPEC`` runs in its own process group with a local Ray instance (whose
processes are its descendants). As soon as one trial has finished while another runs, the whole
group gets SIGKILL; every process the driver started (recorded while it ran) must then be gone, and
whatever is not is killed by PID. ``--resume`` then completes the sweep: the trials that had
finished keep their MLflow runs untouched and are not trained again, interrupted trials reopen their
runs, no metric step is logged twice, every child run ends FINISHED under one FINISHED parent.

Killing right after a completion usually beats Tune's experiment-state save (every 10 s or so), so
the restored Tune state still has that trial running and restarts it: the trial must then see its
FINISHED run and train nothing.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")
psutil = pytest.importorskip("psutil")

from drivers import Driver, resume, wait_for_runs  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from tiny_sweep import sweep_runs, write_tiny_spec  # noqa: E402

EPOCHS = 3
TRIALS = 4  # lora.rank x seeds, two at a time


HISTORY_KEYS = ("epoch", "val/R1", "val/mAP", "train/loss", "test/R1")


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
            for k in HISTORY_KEYS}


def epoch_events(run) -> list[int]:
    path = Path(run.data.tags["run_dir"]) / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()
            if json.loads(line)["event"] == "epoch"]


@pytest.mark.slow
def test_killed_driver_resumes_without_losing_or_repeating(tmp_path):
    spec = write_tiny_spec(tmp_path, "resume", "lora.rank: {grid: [0, 4]}", seeds=(0, 1),
                           epochs=EPOCHS)
    args = [str(spec), "--quiet", "--num-cpus", "2"]

    first = Driver(args, tmp_path / "first.log")
    try:
        client, exp_id, parent_id = wait_for_runs(
            first, tmp_path, "resume",
            lambda kids: any(r.info.status == "FINISHED" for r in kids)
            and any(r.info.status == "RUNNING" for r in kids),
            "trial finished while another ran (before the kill)")
        first.kill_group()
        # Ray's own processes share the driver's fate: none outlives it.
        left = first.survivors(grace=30)
        assert not left, f"processes outlived the killed driver: {[p.pid for p in left]}"
    finally:
        first.end_all()

    finished: dict[str, dict] = {}
    running: set[str] = set()
    kids = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    for run in kids:
        if run.info.status == "FINISHED":
            finished[run.info.run_id] = histories(client, run.info.run_id)
        else:
            running.add(run.info.run_id)
    assert finished and running
    assert client.get_run(parent_id).info.status == "RUNNING"  # killed: left open for --resume

    resume(args, tmp_path / "second.log", 300)

    client, parents, kids = sweep_runs(tmp_path, "resume")
    assert [r.info.run_id for r in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["trials_finished"] == str(TRIALS)
    assert len(kids) == TRIALS
    assert len({r.data.tags["ray_trial_id"] for r in kids}) == TRIALS
    assert len({(r.data.tags["config_key"], r.data.tags["seed"]) for r in kids}) == TRIALS
    ids = {r.info.run_id for r in kids}
    assert set(finished) <= ids and running <= ids  # every run kept, none made twice
    for run in kids:
        rid = run.info.run_id
        assert run.info.status == "FINISHED", (rid, run.info.status)
        assert run.data.tags["stopped_early"] == "false"
        steps = [m.step for m in client.get_metric_history(rid, "epoch")]
        assert steps == list(range(1, EPOCHS + 1)), (rid, steps)
        for key in ("val/R1", "val/mAP", "train/loss"):
            assert len(client.get_metric_history(rid, key)) == EPOCHS, (rid, key)
        assert len(client.get_metric_history(rid, "test/R1")) == 1
        if rid in finished:
            # Finished before the kill: not trained again, nothing logged again.
            assert histories(client, rid) == finished[rid]
            assert epoch_events(run) == list(range(1, EPOCHS + 1))
