"""Every shipped ablation spec, every variant, runs its smoke block end to end: `iclf sweep SPEC
--smoke` with real Ray, Optuna where the spec searches with TPE, MLflow on SQLite, the tiny backbone
unpretrained at 64x32 (the sizes of tests/integration/test_demo.py). Loading is checked for every
spec in tests/unit/test_spec.py; this checks that what loads also runs (a TPE spec once loaded and
then failed in Tune before its first trial)."""

from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from iclf.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAST = ["model.pretrained=null", "model.build_pretrained=false", "model.image_size=[64,32]",
        "training.max_steps_per_epoch=2", "data.batch_size=8", "evaluation.batch_size=64"]


def _shipped() -> list[tuple[str, str | None]]:
    out = []
    for path in sorted((ROOT / "ablations").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        variants = sorted(raw.get("variants") or {})
        out += [(path.name, v) for v in variants] if variants else [(path.name, None)]
    return out


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("name,variant", _shipped(), ids=lambda v: str(v))
def test_every_shipped_spec_runs_its_smoke_block(tmp_path, monkeypatch, ray_local, name, variant):
    monkeypatch.chdir(tmp_path)  # the smoke blocks' data and runs go under the working directory
    chosen = [f"variant={variant}"] if variant else []
    assert main(["sweep", str(ROOT / "ablations" / name), "--smoke", "--quiet", *chosen,
                 *FAST]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(ids, "tags.`iclf.role` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = client.search_runs(ids, "tags.`iclf.role` = 'trial'")
    assert kids and {k.info.status for k in kids} == {"FINISHED"}
    assert all("test/R1" in k.data.metrics for k in kids)
