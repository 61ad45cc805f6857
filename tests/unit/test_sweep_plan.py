"""The sweep plan (`iclf sweep SPEC --dry-run`): the trials, the resources per trial and how many
run at once here, the device-hours projected from the same configurations' earlier MLflow runs or
from timed steps (--measure). It starts no Ray and writes nothing. Real MLflow on SQLite, the real
engine for --measure."""

import subprocess
import sys
from pathlib import Path

import pytest

from iclf.sweep.plan import Machine, config_signature, make_plan
from iclf.sweep.spec import load_spec
from tiny_sweep import write_tiny_spec

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_dry_run_lists_the_trials_starts_no_ray_writes_nothing(tmp_path):
    code = ("import sys\nfrom iclf.cli import main\n"
            f"rc = main(['sweep', {str(ROOT / 'ablations' / 'lora_rank.yaml')!r}, '--dry-run', "
            "'--num-cpus', '4'])\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna')]\n"
            "assert not heavy, heavy\nsys.exit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "sweep lora_rank" in text and ": 18 trials, grid search, fifo scheduler" in text
    assert "trials: 6 configurations x 3 seeds [0, 1, 2]" in text
    for rank in (0, 4, 8, 16, 32, 64):
        assert f"lora.rank={rank} " in text
    assert text.count("seeds 0,1,2  60 epochs") == 6
    assert "resources per trial: 1 CPU" in text and "here 4 CPUs" in text
    assert "projected device-hours: unknown (no tracking database yet at" in text
    assert _files(tmp_path) == []  # no runs/, no database, nothing


def test_dry_run_of_a_bad_spec_exits_2(tmp_path, capsys):
    from iclf.cli import main

    spec = write_tiny_spec(tmp_path, "bad", "fusion.depth: {grid: [0, 1]}")
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "space.fusion.depth: with fusion.depth=0" in err


def test_tpe_plan_shows_the_space_and_the_sample_count(tmp_path):
    spec = load_spec(write_tiny_spec(
        tmp_path, "tpe", "lora.rank: {choice: [0, 4]}\n  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}",
        extra="search: {algorithm: tpe}\nnum_samples: 5\n"))
    plan = make_plan(spec, machine=Machine(cpus=2, gpus=0))
    text = "\n".join(plan.describe())
    assert plan.num_trials == 5 and plan.trials == []
    assert "search space (drawn by tpe: 5 samples x 1 seeds [0] = 5 trials of 2 epochs)" in text
    assert "lora.rank  choice [0, 4]" in text and "optim.lr   loguniform [1e-05, 0.001]" in text
    assert "projected device-hours: unknown (tpe draws its configurations" in text


def test_concurrency_here_from_cpus_gpus_and_the_spec(tmp_path):
    path = write_tiny_spec(tmp_path, "c", "lora.rank: {grid: [0, 4]}", seeds=(0, 1, 2))
    cases = [("{cpu: 1, gpu: 0}", Machine(8, 0), None, (6, "trials")),
             ("{cpu: 2, gpu: 0}", Machine(5, 0), 9, (2, "CPUs")),
             ("{cpu: 1, gpu: 0.25}", Machine(16, 1), 9, (4, "GPUs")),
             ("{cpu: 1, gpu: 0.5}", Machine(16, 2), 3, (3, "max_concurrent_trials")),
             ("{cpu: 1, gpu: auto}", Machine(16, 0), 9, (6, "trials")),
             ("{cpu: 1, gpu: 1}", Machine(16, 0), 9, (0, "GPUs"))]
    for resources, machine, limit, expected in cases:
        over = [f"resources={resources}", f"max_concurrent_trials={limit if limit else 'null'}"]
        plan = make_plan(load_spec(path, over), machine=machine, history=False)
        assert (plan.concurrent, plan.limited_by) == expected, resources
    text = "\n".join(plan.describe())
    assert "this machine has no GPU: the sweep would refuse to start here" in text


def _log_run(client, exp, cfg, *, device="cpu", epochs=2, seconds=10.0, status="FINISHED",
             share=None, parent=None):
    """A run as the engine's MLflow reporter leaves it: the resolved config as params (under
    another name and output directory), epoch and device_seconds, the device tag; a sweep's
    trial also carries the share of its device it held."""
    import dataclasses

    from iclf.config import flatten, to_dict
    from iclf.engine.trainer import resolve_paths
    from iclf.tracking.mlflow import string_params

    cfg = dataclasses.replace(cfg, name="trial_x", output_dir="/elsewhere/runs")
    tags = {"device": device}
    if share is not None:
        tags["device_share"] = str(share)
    if parent is not None:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp, tags=tags)
    rid = run.info.run_id
    params = string_params(flatten(to_dict(resolve_paths(cfg))))
    from mlflow.entities import Metric, Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(rid, params=items[i:i + 100])
    client.log_batch(rid, metrics=[Metric("epoch", epochs, 0, epochs),
                                   Metric("device_seconds", seconds, 0, epochs)])
    if status != "RUNNING":
        client.set_terminated(rid, status)


def test_projection_from_the_same_configurations_earlier_runs(tmp_path):
    from mlflow import MlflowClient

    spec = load_spec(write_tiny_spec(tmp_path, "h", "lora.rank: {grid: [0, 4]}", seeds=(0, 1),
                                     epochs=3))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("earlier")
    rank0 = spec.trial_config({"lora.rank": 0}, 5)   # another seed: the same configuration
    rank4 = spec.trial_config({"lora.rank": 4}, 0)
    _log_run(client, exp, rank0, epochs=2, seconds=10.0)          # 5 s per epoch
    _log_run(client, exp, rank0, epochs=4, seconds=28.0)          # 7 s per epoch
    _log_run(client, exp, rank4, device="cuda", seconds=1.0)      # another kind of device
    _log_run(client, exp, rank4, status="RUNNING", seconds=1.0)   # not finished
    _log_run(client, exp, rank4, status="FAILED", seconds=1.0)
    other = spec.trial_config({"lora.rank": 4}, 0)
    import dataclasses

    other = dataclasses.replace(other, data=dataclasses.replace(other.data, batch_size=4))
    _log_run(client, exp, other, seconds=1.0)                     # another batch size
    db = tmp_path / "mlflow.db"
    before = (db.stat().st_mtime_ns, db.stat().st_size, _files(tmp_path))

    plan = make_plan(spec, machine=Machine(cpus=2, gpus=0))
    assert set(plan.times) == {"lora.rank=0"} and plan.times["lora.rank=0"].seconds == 6.0
    p = plan.projection()
    assert (p.covered, p.trials) == (2, 4) and not p.complete
    assert p.device_hours == pytest.approx(2 * 3 * 6.0 / 3600)
    text = "\n".join(plan.describe())
    assert "projected device-hours: at least 0.01 (2 of 4 trials have a time per epoch" in text
    assert "lora.rank=0  seeds 0,1  3 epochs  6 s per epoch (earlier runs), 0.01 device-h" in text
    assert "wall time" not in text  # only for a complete projection
    assert (db.stat().st_mtime_ns, db.stat().st_size, _files(tmp_path)) == before
    # the signature leaves out what cannot change an epoch's time, keeps what can
    assert config_signature(rank0) == config_signature(spec.trial_config({"lora.rank": 0}, 9))
    assert config_signature(rank0) != config_signature(rank4)


def test_measure_times_each_configuration_and_writes_nothing(tmp_path):
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec = load_spec(write_tiny_spec(spec_dir, "m", "fusion.depth: {grid: [1, 2]}", seeds=(0, 1),
                                     epochs=3))
    said = []
    plan = make_plan(spec, machine=Machine(cpus=2, gpus=0), measure=True, say=said.append)
    assert plan.base is None and set(plan.measured) == {"fusion.depth=1", "fusion.depth=2"}
    for et in plan.measured.values():
        assert et.seconds > 0 and et.once > 0 and et.source.startswith("measured: 8 steps of")
    p = plan.projection()
    assert p.complete and p.covered == 4
    assert p.device_hours == pytest.approx(
        2 * sum(et.trial_seconds(3) for et in plan.measured.values()) / 3600)
    text = "\n".join(plan.describe())
    assert "fusion.depth=1  seeds 0,1  3 epochs" in text and "(measured)" in text
    assert "4 from 2 configurations measured here" in text
    # data built once for both configurations, in the temporary directory
    assert sum("synthetic dataset is not built yet" in s for s in said) == 1
    assert sum(s.startswith("measure: configuration ") for s in said) == 2
    assert _files(spec_dir) == ["m.yaml"]  # no data/, no runs/, no database, no cache
    assert _files(tmp_path) == ["spec", "spec/m.yaml"]


def test_packed_trials_cost_their_share_of_the_gpu(tmp_path, capsys):
    """At ``resources.gpu: 0.5`` two trials share each GPU: a trial costs its time x 0.5. The
    history is read at that share only (a trial's time depends on what shares the card with it),
    the wall time here follows from the GPUs the trials fill, and the actual device-hours logged
    at the end weight each trial by its share."""
    from mlflow import MlflowClient

    from iclf.sweep.plan import log_actual

    path = write_tiny_spec(tmp_path, "g", "lora.rank: {grid: [0, 4]}", seeds=(0, 1), epochs=3)
    spec = load_spec(path, ["resources={cpu: 1, gpu: 0.5}", "max_concurrent_trials=null"])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("earlier")
    for key in (0, 4):
        cfg = spec.trial_config({"lora.rank": key}, 0)
        _log_run(client, exp, cfg, device="cuda:0", epochs=2, seconds=8.0, share=0.5)
        _log_run(client, exp, cfg, device="cuda:0", epochs=2, seconds=2.0)  # alone on a GPU
        _log_run(client, exp, cfg, device="cuda:0", epochs=2, seconds=2.0, share=0.25)
    plan = make_plan(spec, machine=Machine(cpus=16, gpus=2))
    assert (plan.concurrent, plan.limited_by) == (4, "GPUs")
    assert {k: t.seconds for k, t in plan.times.items()} == {"lora.rank=0": 2.0,
                                                             "lora.rank=4": 2.0}  # 8 s x 0.5 / 2
    p = plan.projection()
    assert p.complete and p.device_hours == pytest.approx(4 * 3 * 2.0 / 3600)
    text = "\n".join(plan.describe())
    # 4 trials of 3 epochs x 4 s of wall time each, side by side on 2 GPUs
    assert f"about {3 * 4.0 / 3600:.3g} h of wall time here at 4 at once" in text
    assert "device seconds: a trial's time x its 0.5 GPU" in text

    parent = client.create_run(exp).info.run_id
    cfg = spec.trial_config({"lora.rank": 0}, 0)
    _log_run(client, exp, cfg, device="cuda:0", seconds=3600.0, share=0.5, parent=parent)
    _log_run(client, exp, cfg, device="cuda:0", seconds=3600.0, share=0.5, parent=parent)
    _log_run(client, exp, cfg, device="cpu", seconds=1800.0, parent=parent)  # no share: whole
    assert log_actual(client, exp, parent, say=lambda s: None) == pytest.approx(1.5)
    assert client.get_run(parent).data.metrics["device_hours"] == pytest.approx(1.5)
