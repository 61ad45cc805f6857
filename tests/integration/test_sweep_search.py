"""Optuna's TPE search end to end, with ASHA and with seeds: real Ray Tune, real Optuna, the real
engine and MLflow on SQLite, through `iclf sweep`. The configurations come from the spec's space
(conditions included), ASHA's stopped trials are told apart and still get their test metrics, and
several seeds repeat each drawn configuration."""

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")

from mlflow import MlflowClient  # noqa: E402

from iclf.cli import main  # noqa: E402
from iclf.sweep.spec import load_spec  # noqa: E402
from tiny_sweep import write_tiny_spec  # noqa: E402

SPACE = ("lora.rank: {choice: [0, 4]}\n"
         "  lora.alpha: {choice: [8.0, 16.0], if: {lora.rank: {gt: 0}}}\n"
         "  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _trials(tmp, name):
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(name)
    parent = client.search_runs([exp.experiment_id], "tags.`iclf.role` = 'sweep'")[0]
    kids = client.search_runs([exp.experiment_id], "tags.`iclf.role` = 'trial'")
    return client, parent, kids


def test_tpe_with_asha_draws_from_the_space_and_stops_trials_early(tmp_path, ray_local):
    spec = write_tiny_spec(tmp_path, "tpe_asha", SPACE, seeds=(0,), epochs=3, extra=(
        "search: {algorithm: tpe, seed: 0}\n"
        "scheduler: {name: asha, grace_period: 1, reduction_factor: 2}\n"
        "num_samples: 5\n"))
    # one at a time: ASHA compares each trial with those before it, so its decisions (and TPE's
    # draws, seeded) are the same in every run
    assert main(["sweep", str(spec), "--quiet", "max_concurrent_trials=1"]) == 0
    client, parent, kids = _trials(tmp_path, "tpe_asha")
    assert parent.info.status == "FINISHED" and parent.data.tags["iclf.state"] == "finished"
    assert len(kids) == 5 and {k.info.status for k in kids} == {"FINISHED"}
    drawn = set()
    for k in kids:
        params, metrics, tags = k.data.params, k.data.metrics, k.data.tags
        rank, lr = int(params["param.lora.rank"]), float(params["param.optim.lr"])
        assert rank in (0, 4) and 1e-5 <= lr <= 1e-3
        # the condition: alpha is drawn only where LoRA is on
        assert ("param.lora.alpha" in params) == (rank > 0), params
        if rank > 0:
            assert float(params["param.lora.alpha"]) in (8.0, 16.0)
        epochs = int(metrics["epoch"])
        assert 1 <= epochs <= 3
        assert tags["stopped_early"] == ("true" if epochs < 3 else "false"), (epochs, tags)
        assert "test/R1" in metrics  # a stopped trial's selected weights are tested too
        drawn.add((rank, lr))
    assert len(drawn) == 5  # TPE drew five configurations, not one five times
    stopped = [k for k in kids if k.data.tags["stopped_early"] == "true"]
    assert stopped, "ASHA stopped no trial: the test no longer shows early stopping"
    # the sweep's record: the summary of what was drawn, its device-hours
    assert parent.data.metrics["device_hours"] > 0
    assert load_spec(spec).num_trials() == 5


def test_tpe_with_seeds_repeats_each_drawn_configuration(tmp_path, ray_local):
    import logging

    spec = write_tiny_spec(tmp_path, "tpe_seeds", SPACE, seeds=(0, 1), epochs=1, extra=(
        "search: {algorithm: tpe, seed: 0}\n"
        "num_samples: 2\n"))
    said: list[str] = []
    heard = logging.Handler()
    heard.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("optuna").addHandler(heard)
    try:
        assert main(["sweep", str(spec), "--quiet"]) == 0
    finally:
        logging.getLogger("optuna").removeHandler(heard)
    assert not [s for s in said if "A new study created" in s]  # Optuna's chatter: --verbose
    client, parent, kids = _trials(tmp_path, "tpe_seeds")
    assert len(kids) == 4 and {k.info.status for k in kids} == {"FINISHED"}
    by_config: dict[str, list[int]] = {}
    for k in kids:
        by_config.setdefault(k.data.tags["config_key"], []).append(int(k.data.tags["seed"]))
    assert len(by_config) == 2 and all(sorted(s) == [0, 1] for s in by_config.values()), by_config


@pytest.mark.slow
def test_an_interrupted_tpe_sweep_resumes_with_its_search(tmp_path):
    """Ctrl-C while TPE's third and fourth trials run, then ``--resume``: Tune restores the Optuna
    searcher it saved (its define-by-run space included), so the finished trials are not drawn or
    trained again and the sweep ends with its four trials, each epoch logged once."""
    import os
    import signal

    pytest.importorskip("psutil")
    from drivers import Driver, resume, wait_for_runs

    long = 8
    spec = write_tiny_spec(tmp_path, "tpe_intr", SPACE, seeds=(0,), epochs=long,
                           extra="search: {algorithm: tpe, seed: 0}\nnum_samples: 4\n")
    args = [str(spec), "--quiet", "--num-cpus", "2"]
    first = Driver(args, tmp_path / "first.log")
    try:
        client, exp_id, parent_id = wait_for_runs(
            first, tmp_path, "tpe_intr",
            lambda kids: sum(r.info.status == "FINISHED" for r in kids) >= 1
            and any(r.info.status == "RUNNING" for r in kids), "trial finished while another ran")
        os.killpg(first.proc.pid, signal.SIGINT)
        code = first.wait(180)
        assert code == 130, f"Ctrl-C exited {code}:\n{first.tail()}"
    finally:
        left = first.end_all()
    assert not left and "Traceback" not in first.tail(), first.tail()
    before = {r.info.run_id: dict(r.data.params) for r in
              client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
              if r.info.status == "FINISHED"}
    assert before

    resume(args, tmp_path / "second.log", 300)
    assert "Traceback" not in (tmp_path / "second.log").read_text(errors="replace")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(parent_id).info.status == "FINISHED"
    kids = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(kids) == 4 and {k.info.status for k in kids} == {"FINISHED"}
    for run_id, params in before.items():  # finished before the interrupt: kept as they were
        run = client.get_run(run_id)
        assert run.info.lifecycle_stage == "active" and run.data.params == params
    configs = {(k.data.params["param.lora.rank"], k.data.params["param.optim.lr"]) for k in kids}
    assert len(configs) == 4
    for k in kids:
        steps = [m.step for m in client.get_metric_history(k.info.run_id, "epoch")]
        assert steps == list(range(1, long + 1)), (k.info.run_id, steps)
