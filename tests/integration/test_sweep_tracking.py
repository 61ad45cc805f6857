"""The MLflow tracking layer on a real SQLite database: parent/child runs, find-or-create by trial id,
no duplicate metric steps, params and statuses, and the frames the analysis reads."""

import math
import multiprocessing as mp

import pytest

pytest.importorskip("mlflow")

from iclf.names import PARENT_TAG  # noqa: E402
from iclf.tracking.mlflow import (  # noqa: E402
    RunLogger,
    child_runs,
    close_run,
    connect,
    create_sweep_run,
    default_artifact_location,
    ensure_experiment,
    find_sweep_run,
    git_state,
    load_sweep_frames,
    open_trial_run,
    package_versions,
    reopen_run,
)
from iclf.tracking.uri import resolve_tracking_uri  # noqa: E402


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One SQLite database for the module (creating its schema takes seconds)."""
    uri = resolve_tracking_uri(None, tmp_path_factory.mktemp("runs") / "mlflow.db")
    return uri, connect(uri)


@pytest.fixture()
def sweep(database, request):
    """A fresh experiment and parent run per test."""
    uri, client = database
    exp = ensure_experiment(client, request.node.name, default_artifact_location(uri))
    parent = create_sweep_run(client, exp, request.node.name, {"spec_file": "ablations/demo.yaml"})
    return uri, client, exp, parent


def test_uris_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None, "runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    assert resolve_tracking_uri("sqlite:///x.db", "unused") == f"sqlite:///{tmp_path}/x.db"
    assert resolve_tracking_uri("db/m.db", "unused") == f"sqlite:///{tmp_path}/db/m.db"
    assert resolve_tracking_uri("http://127.0.0.1:5055", "unused") == "http://127.0.0.1:5055"


def test_parent_and_children_find_or_create(sweep):
    uri, client, exp, parent = sweep
    assert ensure_experiment(client, "test_parent_and_children_find_or_create") == exp  # idempotent
    run_a, created_a = open_trial_run(client, exp, parent, "t1", "trial-1", {"seed": 0})
    run_b, created_b = open_trial_run(client, exp, parent, "t1", "trial-1", {"seed": 0})
    run_c, created_c = open_trial_run(client, exp, parent, "t2", "trial-2", {"seed": 1})
    assert (created_a, created_b, created_c) == (True, False, True)
    assert run_a == run_b != run_c
    kids = child_runs(client, exp, parent)
    assert [r.info.run_id for r in kids] == [run_a, run_c]
    assert all(r.data.tags[PARENT_TAG] == parent for r in kids)
    # A second sweep with the same trial id does not see the first one's run.
    other = create_sweep_run(client, exp, "again", {})
    run_d, created_d = open_trial_run(client, exp, other, "t1", "trial-1", {})
    assert created_d and run_d != run_a
    assert find_sweep_run(client, "again").info.run_id == other


def test_closed_run_is_reopened_running(sweep):
    uri, client, exp, parent = sweep
    run, _ = open_trial_run(client, exp, parent, "t1", "trial-1", {})
    close_run(client, run, "FAILED", {"error": "boom"})
    assert client.get_run(run).info.status == "FAILED"
    again, created = open_trial_run(client, exp, parent, "t1", "trial-1", {})
    assert again == run and not created
    assert client.get_run(run).info.status == "RUNNING"
    close_run(client, parent, "KILLED")
    reopen_run(client, parent)
    assert client.get_run(parent).info.status == "RUNNING"


def test_no_metric_step_logged_twice_across_restarts(sweep):
    uri, client, exp, parent = sweep
    run, _ = open_trial_run(client, exp, parent, "t1", "trial-1", {})
    first = RunLogger(client, run)
    assert first.log_epoch(1, {"epoch": 1, "val/R1": 10.0, "train/loss": 3.0})
    assert first.log_epoch(2, {"epoch": 2, "val/R1": 20.0, "train/loss": 2.0})
    assert not first.log_epoch(2, {"epoch": 2, "val/R1": 20.0})
    # The trial is retried from its epoch-1 checkpoint: epoch 2 is trained (and reported) again.
    second = RunLogger(client, run)
    assert second.epochs == {1, 2}
    assert not second.log_epoch(2, {"epoch": 2, "val/R1": 20.0, "train/loss": 2.0})
    assert second.log_epoch(3, {"epoch": 3, "val/R1": 30.0, "train/loss": 1.0})
    for key in ("epoch", "val/R1", "train/loss"):
        steps = [m.step for m in client.get_metric_history(run, key)]
        assert sorted(steps) == [1, 2, 3], key
    assert second.history("val/R1") == {1: 10.0, 2: 20.0, 3: 30.0}


def test_params_once_and_immutable(sweep):
    uri, client, exp, parent = sweep
    run, _ = open_trial_run(client, exp, parent, "t1", "trial-1", {})
    log = RunLogger(client, run)
    params = {f"p{i}": i for i in range(150)}  # more than one log_batch
    params["lists"] = [1, 2]
    assert log.log_params(params) == 151
    assert RunLogger(client, run).log_params(params) == 0
    assert client.get_run(run).data.params["lists"] == "[1, 2]"
    with pytest.raises(ValueError, match="p3"):
        RunLogger(client, run).log_params({"p3": 4})


def test_log_once_keeps_first_values(sweep):
    uri, client, exp, parent = sweep
    run, _ = open_trial_run(client, exp, parent, "t1", "trial-1", {})
    assert RunLogger(client, run).log_once({"test/R1": 50.0, "trainable_params": 10}, step=3) == [
        "test/R1", "trainable_params"]
    assert RunLogger(client, run).log_once({"test/R1": 51.0}, step=3) == []
    assert [m.value for m in client.get_metric_history(run, "test/R1")] == [50.0]


def _log_from_process(uri, run_id, epochs):
    from iclf.tracking.mlflow import RunLogger, connect

    log = RunLogger(connect(uri), run_id)
    for e in epochs:
        log.log_epoch(e, {"val/R1": float(e)})


def test_trial_processes_log_concurrently_to_one_database(sweep):
    uri, client, exp, parent = sweep
    runs = [open_trial_run(client, exp, parent, f"t{i}", f"trial-{i}", {})[0] for i in range(2)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_from_process, args=(uri, r, range(1, 6))) for r in runs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    for r in runs:
        assert sorted(m.step for m in client.get_metric_history(r, "val/R1")) == [1, 2, 3, 4, 5]


def test_load_sweep_frames(sweep):
    uri, client, exp, parent = sweep
    for i, (rank, seed) in enumerate([(0, 0), (8, 0), (8, 1)]):
        run, _ = open_trial_run(client, exp, parent, f"t{i}", f"trial-{i}",
                                {"config_key": f"lora.rank={rank}", "seed": seed})
        log = RunLogger(client, run)
        log.log_params({"lora.rank": rank, "param.lora.rank": rank,
                        "param.losses.weights": '{"id": 1.0}'})
        for epoch in (1, 2):
            r1 = 10.0 * epoch + rank + (5.0 if epoch == 1 and rank == 8 else 0.0)
            log.log_epoch(epoch, {"val/R1": r1, "val/R5": r1 + 1, "val/R10": r1 + 2,
                                  "val/mAP": r1 / 2, "val/mINP": r1 / 4,
                                  "best_epoch": 1 if rank == 8 and epoch == 2 else epoch,
                                  "device_seconds": 1.5 * epoch})
        log.log_once({"trainable_params": 100 + rank, "test/R1": 40.0 + rank, "test/mAP": 30.0,
                      "test/mINP": 20.0}, step=2)
        close_run(client, run, "FINISHED")
    trials, curves = load_sweep_frames(uri, parent)
    assert list(trials["config_key"]) == ["lora.rank=0", "lora.rank=8", "lora.rank=8"]
    assert list(trials["param.lora.rank"]) == [0, 8, 8]
    assert list(trials["param.losses.weights"]) == ['{"id": 1.0}'] * 3
    assert list(trials["seed"]) == [0, 0, 1]
    assert set(trials["status"]) == {"FINISHED"}
    # val metrics come from the selected epoch (best_epoch), not the last one.
    assert list(trials["val/R1"]) == [20.0, 23.0, 23.0]
    assert list(trials["val/mINP"]) == [5.0, 23.0 / 4, 23.0 / 4]
    assert list(trials["test/R1"]) == [40.0, 48.0, 48.0]
    assert list(trials["trainable_params"]) == [100, 108, 108]
    assert list(trials["device_seconds"]) == [3.0, 3.0, 3.0]
    for col in ("val/R5", "val/R10", "val/mAP", "test/mAP", "test/mINP"):
        assert col in trials.columns
    assert list(curves.columns) == ["run_id", "config_key", "epoch", "val/R1", "val/mAP", "val/mINP"]
    assert len(curves) == 6 and list(curves["epoch"]) == [1, 2] * 3
    by_name, _ = load_sweep_frames(uri, sweep="test_load_sweep_frames")
    assert list(by_name["run_id"]) == list(trials["run_id"])
    assert not any(math.isnan(v) for v in trials["val/mAP"])


def test_provenance_tags(tmp_path):
    state = git_state(tmp_path)
    assert state == {"git_sha": "unknown", "git_dirty": "unknown"}
    versions = package_versions()
    assert versions["version.mlflow"].startswith("3.")
    assert "version.torch" in versions and "version.python" in versions
