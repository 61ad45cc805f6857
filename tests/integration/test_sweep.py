"""A smoke sweep end to end with real Ray Tune, the real engine and MLflow on SQLite: `iclf sweep` runs
two trials of the tiny model, and MLflow then holds one FINISHED parent run with one FINISHED child per
trial carrying per-epoch validation metrics, final test metrics, params and artifacts. Plus the
command's errors (bad spec, existing sweep, nothing to resume), which need no Ray."""

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from iclf.sweep.cli import main  # noqa: E402
from iclf.tracking.system import ENV as SYSTEM_ENV  # noqa: E402
from tiny_sweep import write_tiny_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 2



def write_smoke(tmp: Path) -> Path:
    return write_tiny_spec(tmp, "smoke", "lora.rank: {grid: [0, 4]}", seeds=(3,), epochs=EPOCHS,
                           extra="baseline: {lora.rank: 0}\n")


@pytest.fixture(scope="module")
def ray_local():
    # System metrics every second (default: every minute); Ray's workers inherit the environment
    # the local instance starts with.
    before = os.environ.get(SYSTEM_ENV)
    os.environ[SYSTEM_ENV] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop(SYSTEM_ENV, None)
    else:
        os.environ[SYSTEM_ENV] = before


CONSOLE: dict[str, str] = {}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("sweep")
    spec = write_smoke(tmp)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the progress table (no --quiet)
        code = main([str(spec)])
    CONSOLE["stdout"] = out.getvalue()
    return tmp, spec, code


def test_progress_table_shows_the_metrics_that_matter(swept):
    """iclf's table of trials, not Ray's: swept parameter, seed, epoch, val/R1 and its best so far,
    val/mAP, samples/s; no TensorBoard hint, no inferred train/* columns."""
    out = CONSOLE["stdout"]
    tables = [line for line in out.splitlines() if re.match(r"\[iclf\] \d+:\d\d:\d\d  ", line)]
    assert tables and "2 done of 2 (final)" in tables[-1], out[-3000:]
    at = out.splitlines().index(tables[-1])
    header, *rows = out.splitlines()[at + 1:at + 4]
    assert header.split() == ["trial", "status", "lora.rank", "seed", "epoch", "val/R1", "best",
                              "val/R1", "val/mAP", "samples/s"]
    assert sorted(r.split()[2] for r in rows) == ["0", "4"]
    for row in rows:
        cells = row.split()
        assert cells[1] == "done" and cells[3] == "3" and cells[4] == f"{EPOCHS}/{EPOCHS}"
        assert all(float(c) >= 0 for c in cells[5:])
    assert "tensorboard" not in out.lower() and "train/itc" not in out


def test_smoke_sweep_logs_parent_and_children(swept):
    tmp, spec, code = swept
    assert code == 0
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("iclf.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("iclf.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["spec_file"] == str(spec) and len(tags["spec_sha256"]) == 64
    assert tags["git_sha"] and tags["git_dirty"] in ("true", "false", "unknown")
    assert tags["version.ray"].startswith("2.") and tags["version.mlflow"].startswith("3.")
    assert tags["dataset_fingerprint"]
    state = json.loads((tmp / "ray" / "smoke" / "sweep.json").read_text())
    assert state["parent_run_id"] == parent.info.run_id
    assert {r.data.tags["config_key"] for r in children} == {"lora.rank=0", "lora.rank=4"}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["seed"] == "3" and run.data.tags["stopped_early"] == "false"
        assert run.data.tags["dataset_fingerprint"] == tags["dataset_fingerprint"]
        for key in ("val/R1", "val/mAP", "val/mINP", "train/loss", "lr", "samples_per_s", "epoch"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(1, EPOCHS + 1)), key
        metrics = run.data.metrics
        for key in ("test/R1", "test/mAP", "test/mINP", "trainable_params", "device_seconds",
                    "peak_memory_mb"):
            assert key in metrics, key
        assert len(client.get_metric_history(run.info.run_id, "test/R1")) == 1
        params = run.data.params
        assert params["param.lora.rank"] == run.data.tags["config_key"].split("=")[1]
        assert params["seed"] == "3" and params["training.epochs"] == str(EPOCHS)
        assert params["lora.rank"] == params["param.lora.rank"]
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "configs.yaml" in arts
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == [
            "checkpoint/best.pt"]
    # LoRA trains fewer parameters than full fine-tuning (rank 0).
    by_key = {r.data.tags["config_key"]: r.data.metrics["trainable_params"] for r in children}
    assert by_key["lora.rank=4"] < by_key["lora.rank=0"]


def test_trials_log_system_metrics_while_they_run(swept):
    """MLflow's system metrics on every trial run (CPU and memory here; GPU where one is visible),
    at the interval of ICLF_SYSTEM_METRICS_S, each step once, none after the run was closed."""
    tmp, spec, code = swept
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    children = client.search_runs([exp.experiment_id], "tags.`iclf.role` = 'trial'")
    assert len(children) == 2
    for run in children:
        for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                    "system/system_memory_usage_percentage"):
            history = client.get_metric_history(run.info.run_id, key)
            assert history, key
            steps = [m.step for m in history]
            assert len(set(steps)) == len(steps), (key, steps)
            assert all(m.timestamp <= run.info.end_time for m in history), key
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert all(0.0 <= m.value <= 100.0 for m in cpu)


def test_trials_log_retrieval_grids_and_the_report_compares_them(swept):
    """Each trial's selected checkpoint: its retrieval grid (PNG) and data under retrieval/; the
    report draws the baseline's and the best configuration's side by side."""
    from PIL import Image

    tmp, spec, code = swept
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("smoke")
    for run in client.search_runs([exp.experiment_id], "tags.`iclf.role` = 'trial'"):
        names = {a.path for a in client.list_artifacts(run.info.run_id, "retrieval")}
        assert names == {"retrieval/best_retrieval.json", "retrieval/best_retrieval.png"}
        local = client.download_artifacts(run.info.run_id, "retrieval", str(tmp / run.info.run_id))
        record = json.loads(Path(local, "best_retrieval.json").read_text())
        assert record["split"] == "val" and 1 <= record["k"] <= 10  # 10, or the whole gallery
        assert record["epoch"] == int(run.data.metrics["best_epoch"])
        pids = [q["pid"] for q in record["queries"]]
        assert 1 <= len(pids) <= 8 and len(set(pids)) == len(pids)  # one query per identity
        assert all(len(q["gallery"]) == record["k"] for q in record["queries"])
        with Image.open(Path(local, "best_retrieval.png")) as picture:
            assert picture.size[0] > 300 + record["k"] * 56 and picture.size[1] > len(pids) * 100
    report = json.loads((tmp / "ray" / "smoke" / "report" / "report.json").read_text())
    # the baseline (lora.rank=0) and the best, one picture when the baseline is the best
    assert set(report["retrieval"]["runs"]) == {"lora.rank=0", report["best_key"]}
    assert (tmp / "ray" / "smoke" / "report" / "retrieval.png").is_file()


def test_analysis_frames_and_report(swept):
    tmp, spec, code = swept
    from iclf.tracking.mlflow import load_sweep_frames

    trials, curves = load_sweep_frames(f"sqlite:///{tmp}/mlflow.db", sweep="smoke")
    assert sorted(trials["param.lora.rank"]) == [0, 4]
    assert set(trials["status"]) == {"FINISHED"} and list(trials["seed"]) == [3, 3]
    assert trials["test/R1"].notna().all() and trials["val/R1"].notna().all()
    assert len(curves) == 2 * EPOCHS
    report = tmp / "ray" / "smoke" / "report"
    if (ROOT / "iclf" / "analysis" / "report.py").is_file():
        assert (report / "summary.csv").is_file()
        client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
        parent = json.loads((tmp / "ray" / "smoke" / "sweep.json").read_text())["parent_run_id"]
        assert "report" in {a.path for a in client.list_artifacts(parent)}


def test_finished_trials_keep_only_weights_config_and_metrics(swept):
    """Disk bounded per trial: once FINISHED, a trial's Ray checkpoints are emptied (their
    directories stay, with a note), its run directory keeps best.pt, configs.yaml and
    metrics.jsonl, and best.pt is one file with its MLflow artifact: at most 1.5x its weights."""
    import os

    from iclf.sweep.cleanup import RELEASED, local_artifact_dir, trial_bytes

    tmp, spec, code = swept
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              "tags.`iclf.role` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        run_dir = Path(run.data.tags["run_dir"])
        trial_dir = tmp / "ray" / "smoke" / f"trial_{run.data.tags['ray_trial_id']}"
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        assert checkpoints, sorted(p.name for p in trial_dir.iterdir())
        for ckpt in checkpoints:
            assert [p.name for p in ckpt.iterdir()] == [RELEASED]
        assert sorted(p.name for p in (run_dir / "checkpoint").iterdir()) == [
            "best.pt", "best_retrieval.json", "best_retrieval.png"]  # + its retrieval picture
        assert (run_dir / "configs.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()
        assert not (run_dir / "snapshots").exists()  # the epoch snapshots went with the state
        assert not (run_dir.parent / ".spares").exists()  # the pool of spare states, at the end
        artifacts = local_artifact_dir(run.info.artifact_uri)
        best = run_dir / "checkpoint" / "best.pt"
        assert os.path.samefile(best, artifacts / "checkpoint" / "best.pt")
        total = trial_bytes([trial_dir, run_dir, artifacts])
        assert total <= 1.5 * best.stat().st_size, (total, best.stat().st_size)


def test_projection_and_actual_device_hours(swept):
    """The parent run carries the projection made at the start (none: no history yet) and the
    device-hours the trials took; projected again from this sweep's runs, the plan gives them."""
    from iclf.sweep.plan import make_plan
    from iclf.sweep.spec import load_spec

    tmp, spec, code = swept
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    parent = json.loads((tmp / "ray" / "smoke" / "sweep.json").read_text())["parent_run_id"]
    run = client.get_run(parent)
    assert run.data.tags["projection"].startswith("unknown (no earlier cpu run of these "
                                                  "configurations")
    kids = client.search_runs([run.info.experiment_id], "tags.`iclf.role` = 'trial'")
    actual = sum(k.data.metrics["device_seconds"] for k in kids) / 3600
    assert run.data.metrics["device_hours"] == pytest.approx(actual)
    db = tmp / "mlflow.db"
    before = (db.stat().st_mtime_ns, db.stat().st_size, sorted(p.name for p in tmp.iterdir()))
    projection = make_plan(load_spec(spec)).projection()
    assert projection.complete and projection.covered == 2
    assert projection.device_hours == pytest.approx(actual)
    assert (db.stat().st_mtime_ns, db.stat().st_size, sorted(p.name for p in tmp.iterdir())) \
        == before  # the history is read from a snapshot: the store is untouched


def test_existing_sweep_needs_resume(swept, capsys):
    tmp, spec, code = swept
    assert main([str(spec)]) == 2
    assert "a sweep already exists at" in capsys.readouterr().err


def test_resume_without_sweep_and_bad_spec(tmp_path, capsys):
    spec = write_smoke(tmp_path)
    assert main([str(spec), "--resume"]) == 2
    assert "nothing to resume at" in capsys.readouterr().err
    bad = write_tiny_spec(tmp_path, "bad", "fusion.depth: {grid: [0, 1]}", epochs=EPOCHS)
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}: space.fusion.depth: with fusion.depth=0: losses.weights.mlm: the MLM " \
           f"loss needs the fusion module" in err
    assert main([str(spec), "--smoke"]) == 2
    assert "smoke: --smoke was asked for but the spec has no smoke: block" in capsys.readouterr().err
