"""The sweep driver's start: Ray starts while the sweep's MLflow record opens
(iclf.sweep.tune.run_sweep). Whatever fails on one side, the other is waited for and wound down:
real Ray, real MLflow on SQLite, real files."""

import pytest

pytest.importorskip("ray")

from tiny_sweep import write_tiny_spec  # noqa: E402


def test_a_record_that_cannot_open_stops_the_sweep_and_ray_with_it(tmp_path, capsys):
    """Ray starts while the sweep's MLflow record opens (iclf.sweep.tune.run_sweep); when the
    record fails, its error is the one line the CLI prints (exit 2), and the Ray it started is
    shut down."""
    import ray

    from iclf.cli import main

    assert not ray.is_initialized()

    (tmp_path / "taken").write_text("a file where the database's folder should be\n")
    spec = write_tiny_spec(tmp_path, "noopen", "lora.rank: {grid: [0, 4]}")
    code = main(["sweep", str(spec), f"tracking.uri=sqlite:///{tmp_path}/taken/mlflow.db",
                 "--num-cpus", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    # (the data's progress bars stand above it)
    assert "Traceback" not in err and "Ray" not in err, err
    assert err.splitlines()[-1].startswith(
        f"error: cannot use the tracking store sqlite:///{tmp_path}/taken/mlflow.db")
    assert not ray.is_initialized()
    assert not (tmp_path / "ray" / "noopen").exists()


def test_ctrl_c_while_ray_starts_leaves_a_sweep_that_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the record opened but before Tune saved any experiment state (here: while Ray
    starts; KeyboardInterrupt is what Python raises for it) is an interrupt like any other: exit
    130 with the resume hint, and ``--resume`` then runs the whole sweep under the same record
    (it used to answer "nothing to resume", while a fresh start was refused: the name was stuck)."""
    import ray

    import iclf.sweep.tune as sweep_tune
    from iclf.cli import main
    from tiny_sweep import sweep_runs

    spec = write_tiny_spec(tmp_path, "early", "lora.rank: {grid: [0, 4]}")

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sweep_tune, "_init_ray", ctrl_c)
        assert main(["sweep", str(spec), "--num-cpus", "2", "--quiet"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted: 0 of 2 trials finished; continue with `iclf sweep {spec} --resume`"
    assert not ray.is_initialized()
    # What a driver killed before Tune's first save would also leave: a trial's child run and its
    # directory, which no Tune state names (written here with the same calls a trial makes)
    from iclf.sweep.storage import read_state
    from iclf.tracking.mlflow import connect, open_trial_run

    state = read_state(tmp_path / "ray" / "early")
    stale, _ = open_trial_run(connect(state["tracking_uri"]), state["experiment_id"],
                              state["parent_run_id"], "0dead_00000", "lora.rank=0 seed=0",
                              {"config_key": "lora.rank=0", "seed": 0})
    (tmp_path / "ray" / "early" / "trial_0dead_00000" / "checkpoint").mkdir(parents=True)
    assert main(["sweep", str(spec), "--num-cpus", "2", "--quiet", "--resume"]) == 0, \
        capsys.readouterr().err[-3000:]
    assert "its trials start again (the 1 child run(s) of the earlier start deleted)" in \
        capsys.readouterr().out
    assert not (tmp_path / "ray" / "early" / "trial_0dead_00000").exists()
    client, parents, kids = sweep_runs(tmp_path, "early")
    assert client.get_run(stale).info.lifecycle_stage == "deleted"
    assert stale not in {r.info.run_id for r in kids}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.params["lora.rank"] for r in kids) == ["0", "4"]
    assert all(r.info.status == "FINISHED" for r in kids)
    for run in kids:
        assert len(client.get_metric_history(run.info.run_id, "val/R1")) == 2
