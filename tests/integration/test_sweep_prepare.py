"""What the sweep driver prepares before any trial starts, and the resources each trial asks Ray
for: real files, a real local Ray instance (with declared GPUs on a machine that has none)."""

from pathlib import Path

import pytest

pytest.importorskip("ray")

from iclf.sweep.spec import load_spec  # noqa: E402
from tiny_sweep import write_tiny_spec  # noqa: E402


def test_driver_builds_the_image_cache_before_trials(tmp_path):
    from iclf.data.cache import cache_file
    from iclf.sweep.tune import prepare_shared_inputs

    spec = load_spec(write_tiny_spec(tmp_path, "prep", "lora.rank: {grid: [0, 4]}"))
    fingerprint = prepare_shared_inputs(spec)
    assert fingerprint
    cache = cache_file(tmp_path / "data" / ".iclf-cache", "CUHK-PEDES", "train", (64, 32))
    assert cache.is_file() and cache.stat().st_size > 3 * 64 * 32
    (tmp_path / "off").mkdir()
    off = load_spec(write_tiny_spec(tmp_path / "off", "prep", "lora.rank: {grid: [0, 4]}"),
                    ["data.image_cache=off"])
    prepare_shared_inputs(off)
    assert (tmp_path / "off" / "data" / "CUHK-PEDES").is_dir()
    assert not (tmp_path / "off" / "data" / ".iclf-cache").exists()


def _spec_with(tmp_path: Path, resources: str):
    return load_spec(write_tiny_spec(tmp_path, "pack", "lora.rank: {grid: [0, 4]}"),
                     [f"resources={resources}"])


def test_a_gpu_trial_needs_a_gpu_in_the_cluster(tmp_path):
    import ray

    from iclf.sweep.tune import SweepError, _trial_resources

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(SweepError, match=r"resources.gpu: 0.5 GPU per trial, but the Ray "
                                             r"cluster has no GPU"):
            _trial_resources(_spec_with(tmp_path, "{cpu: 1, gpu: 0.5}"))
        assert _trial_resources(_spec_with(tmp_path, "{cpu: 1, gpu: auto}"))["gpu"] == 0
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_with_one_gpu():
    """A local Ray instance that declares one GPU (none needs to exist: Ray only counts it)."""
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("gpu,fits", [(0.5, 2), (0.25, 4), (1, 1)])
def test_gpu_fraction_reaches_the_trial_resources(tmp_path, ray_with_one_gpu, gpu, fits):
    """resources.gpu 0.5 / 0.25: each trial asks Ray for that fraction, and Ray places 2 / 4 trials
    on the one GPU at once (the next waits); gpu 1 places one."""
    from iclf.sweep.tune import TrialContext, _trainable, _trial_resources

    spec = _spec_with(tmp_path, f"{{cpu: 0.5, gpu: {gpu}}}")
    resources = _trial_resources(spec)
    assert resources == {"cpu": 0.5, "gpu": float(gpu)}
    ctx = TrialContext(spec=spec, tracking_uri="sqlite:///unused.db", experiment_id="0",
                       parent_run_id="0", sweep_dir=str(tmp_path))
    request = _trainable(ctx, resources)._resources  # what tune.with_resources gives the Tuner
    assert request.required_resources == {"CPU": 0.5, "GPU": float(gpu)}
    import ray

    groups = [request() for _ in range(fits + 1)]  # a placement group per trial, as Tune makes
    try:
        # Ray places pending groups in no set order: any `fits` of them, and exactly that many (the
        # one left waits: the GPU is full). Waited for together, with room for a slow machine.
        placed, pending = ray.wait([g.ready() for g in groups], num_returns=fits, timeout=120)
        assert len(placed) == fits
        extra, _ = ray.wait(pending, num_returns=1, timeout=2)
        assert extra == []
    finally:
        from ray.util import remove_placement_group

        for g in groups:
            remove_placement_group(g)


def test_a_packed_trial_records_its_share_and_costs_it(tmp_path, ray_with_one_gpu):
    """Two trials at 0.5 GPU share the declared GPU (they train on the CPU here): each child run
    is tagged ``device_share=0.5``, and the sweep's device-hours (the parent run's, the summary's)
    count each trial's time x 0.5."""
    from mlflow import MlflowClient

    from iclf.analysis.summary import summarize_sweep
    from iclf.cli import main
    from iclf.tracking.mlflow import load_sweep_frames

    spec = write_tiny_spec(tmp_path, "packed", "lora.rank: {grid: [0, 4]}", epochs=1,
                           extra="baseline: {lora.rank: 0}\n")
    assert main(["sweep", str(spec), "--quiet", "resources={cpu: 1, gpu: 0.5}"]) == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "tags.`iclf.role` = 'sweep'")[0]
    kids = client.search_runs([parent.info.experiment_id], "tags.`iclf.role` = 'trial'")
    assert len(kids) == 2 and {k.data.tags.get("device_share") for k in kids} == {"0.5"}
    seconds = sum(k.data.metrics["device_seconds"] for k in kids)
    assert seconds > 0
    assert parent.data.metrics["device_hours"] == pytest.approx(0.5 * seconds / 3600)
    trials, _ = load_sweep_frames(uri, parent.info.run_id)
    assert list(trials["device_share"]) == [0.5, 0.5]
    summary = summarize_sweep(trials, metrics=["val/R1"], baseline="lora.rank=0")
    assert summary.total_device_hours == pytest.approx(0.5 * seconds / 3600)
