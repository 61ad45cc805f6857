"""Disk bounded per trial, against the worst moment to lose the driver: a trial has finished and
released its resumable state (Ray's checkpoints emptied, state.pt gone), and the driver dies before
Tune saves that the trial finished. ``--resume`` then restarts the trial from its released
checkpoint; it must find its FINISHED MLflow run and report it without training or reading any
state, and the sweep must finish correctly: every trial FINISHED once, no epoch or test metric
logged twice, the released trial's runs and metrics untouched, every trial at most 1.5x its
selected weights on disk. Real Ray, MLflow on SQLite, the engine; SIGKILL to a real driver."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from mlflow import MlflowClient  # noqa: E402
from drivers import Driver, resume  # noqa: E402
from test_sweep_resume import epoch_events, histories  # noqa: E402
from tiny_sweep import sweep_runs, write_tiny_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3

# The driver, with the release of a finished trial's state followed by SIGKILL of the driver.
KILL_AFTER_RELEASE = """
import os, signal, sys
from iclf.sweep import cleanup

release = cleanup.release_trial

def release_then_die(*args, **kwargs):
    out = release(*args, **kwargs)
    print("[test] released, killing the driver", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    return out

cleanup.release_trial = release_then_die
from iclf.sweep.cli import main
sys.exit(main(sys.argv[1:]))
"""


class KillingDriver(Driver):
    """``Driver`` running the sweep through KILL_AFTER_RELEASE."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.log = log
        self.out = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", KILL_AFTER_RELEASE, *args], cwd=ROOT,
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env)
        self.root = psutil.Process(self.proc.pid)
        self.seen = {self.proc.pid: self.root}


def _released(trial_dir: Path, run_dir: Path) -> bool:
    checkpoints = list(trial_dir.glob("checkpoint_*"))
    return bool(checkpoints) and all([p.name for p in c.iterdir()] == ["RELEASED.txt"]
                                     for c in checkpoints) \
        and not (run_dir / "checkpoint" / "state.pt").exists()


@pytest.mark.slow
def test_resume_after_a_finished_trial_released_its_state(tmp_path):
    from iclf.sweep.cleanup import local_artifact_dir, trial_bytes

    spec = write_tiny_spec(tmp_path, "released", "lora.rank: {grid: [0, 4]}", epochs=EPOCHS)
    sweep_dir = tmp_path / "ray" / "released"
    args = [str(spec), "--quiet", "--num-cpus", "2", "max_concurrent_trials=1"]
    # Tune saves its experiment state at every step: the state it is killed with has the trial
    # running, with the checkpoint the release has just emptied.
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    first = KillingDriver(args, tmp_path / "first.log", env)
    try:
        code = first.wait(400)
        assert code == -9, f"expected the driver killed after a release, got {code}:\n" \
                           f"{first.tail()}"
    finally:
        first.kill_group()  # the rest of the driver's process group (Ray's), then by PID
        first.end_all()
    assert "[test] released, killing the driver" in first.tail()

    parent_id = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = client.get_run(parent_id).info.experiment_id
    kids = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    done = [r for r in kids if r.info.status == "FINISHED"]
    assert len(done) == 1, [(r.info.run_id, r.info.status) for r in kids]
    first_run = done[0]
    first_id = first_run.info.run_id
    first_trial_dir = sweep_dir / f"trial_{first_run.data.tags['ray_trial_id']}"
    first_run_dir = Path(first_run.data.tags["run_dir"])
    assert _released(first_trial_dir, first_run_dir)  # its states are gone before --resume
    before = histories(client, first_id)
    results_before = len((first_trial_dir / "result.json").read_text().splitlines())

    resume(args, tmp_path / "second.log", 400)

    # Tune restarted the released trial (its saved state had it running): it reported its
    # FINISHED run again, and trained nothing.
    assert len((first_trial_dir / "result.json").read_text().splitlines()) > results_before
    client, parents, kids = sweep_runs(tmp_path, "released")
    assert [r.info.run_id for r in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["trials_finished"] == "2"
    assert parents[0].data.tags["trials_failed"] == "0"
    assert len(kids) == 2 and {r.data.tags["config_key"] for r in kids} == {"lora.rank=0",
                                                                          "lora.rank=4"}
    for run in kids:
        rid = run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["stopped_early"] == "false"
        assert [m.step for m in client.get_metric_history(rid, "epoch")] == [1, 2, 3]
        assert len(client.get_metric_history(rid, "val/R1")) == EPOCHS
        assert len(client.get_metric_history(rid, "test/R1")) == 1
        assert epoch_events(run) == [1, 2, 3]
        trial_dir = sweep_dir / f"trial_{run.data.tags['ray_trial_id']}"
        run_dir = Path(run.data.tags["run_dir"])
        assert _released(trial_dir, run_dir)
        best = run_dir / "checkpoint" / "best.pt"
        total = trial_bytes([trial_dir, run_dir, local_artifact_dir(run.info.artifact_uri)])
        assert total <= 1.5 * best.stat().st_size, (total, best.stat().st_size)
    assert histories(client, first_id) == before  # the released trial: nothing logged again
