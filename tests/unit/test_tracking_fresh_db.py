"""Several processes creating one fresh SQLite tracking database at once (two sweeps started
together on a new machine): every one gets a working client, none an alembic traceback."""

import multiprocessing as mp

import pytest

pytest.importorskip("mlflow")


def _connect(uri: str, barrier, results) -> None:
    from iclf.tracking.mlflow import connect, ensure_experiment

    barrier.wait()
    try:
        client = connect(uri)
        ensure_experiment(client, "same")
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")


def test_concurrent_creation_of_a_fresh_database(tmp_path):
    ctx = mp.get_context("spawn")
    n = 3
    barrier, results = ctx.Barrier(n), ctx.Queue()
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    procs = [ctx.Process(target=_connect, args=(uri, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    outcomes = [results.get(timeout=5) for _ in range(n)]
    assert outcomes == ["ok"] * n, outcomes


def test_a_database_whose_folder_cannot_be_made_is_one_clear_error(tmp_path):
    from iclf.tracking.errors import TrackingError
    from iclf.tracking.mlflow import connect

    (tmp_path / "taken").write_text("a file where the database's folder should be\n")
    uri = f"sqlite:///{tmp_path}/taken/runs/mlflow.db"
    with pytest.raises(TrackingError, match=r"cannot use the tracking store .*taken/runs/mlflow\.db"
                                            r".*taken"):
        connect(uri)
