"""`iclf demo` (what `make demo` runs), on the demo spec's smoke block with the tiny backbone
unpretrained at 64x32: real Ray, MLflow on SQLite, everything under a temporary working directory.
The first call runs the sweep and shows the report its finalize wrote and logged (not computed and
logged a second time); the second call shows the finished sweep."""

import re

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from iclf.cli import main  # noqa: E402

FAST = ["model.pretrained=null", "model.build_pretrained=false", "model.image_size=[64,32]",
        "training.max_steps_per_epoch=2", "data.batch_size=8", "evaluation.batch_size=64"]


def test_demo_runs_once_then_shows_the_finished_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--smoke", "--num-cpus", "2", *FAST]) == 0
    first = capsys.readouterr().out
    assert "[iclf demo] sweep done in" in first
    assert "== summary over seeds (iclf summary) ==" in first
    assert re.search(r"losses\.weights\.sdm=1\.0,fusion\.depth=2\s+1\s", first), first
    assert "(artifacts/report) by the sweep" in first  # shown, not recomputed and logged again
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "tags.`iclf.role` != 'trial'")[0]
    logged = [f.path for f in client.list_artifacts(parent.info.run_id, "report")]
    assert "report/summary.txt" in logged and "report/report.json" in logged

    assert main(["demo", "--smoke", "--num-cpus", "2", *FAST]) == 0
    second = capsys.readouterr().out
    assert "the demo sweep already ran" in second and "sweep done in" not in second
    assert re.search(r"losses\.weights\.sdm=1\.0,fusion\.depth=2\s+1\s", second), second
    assert f"logged to MLflow run {parent.info.run_id} (artifacts/report)\n" in second
