"""The cluster's tracking store for real: PostgreSQL from the distribution's binaries, an MLflow
server on it with MLflow's basic-auth app, and a sweep on a two-node local Ray cluster logging to it
as a non-admin user.

* the sweep: one parent, both children FINISHED with R1/mAP/mINP, no duplicated step, trials on both
  worker nodes (the same checks as the SQLite cluster sweep);
* the login: the trials got it from the driver (the cluster's raylets were started before it was
  set, so their workers cannot have inherited it); no request without it, or with a wrong
  password, is served (401); no secret appears in any run's params, tags, metrics or artifacts, in
  the sweep's Ray directory, or in what the driver printed;
* bad input: a wrong password, for `iclf summary` and `iclf sweep`, is one line and exit 2;
* `iclf ui --tracking-uri postgresql+psycopg://...` serves the database on 127.0.0.1, no login.

Everything binds to 127.0.0.1; PostgreSQL and the MLflow server are stopped at the end.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

import servers  # noqa: E402
from tiny_sweep import write_tiny_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "researcher", "researcher-pw-7Hq2x9"  # a non-admin user of the MLflow server
DB_PASSWORD = "db-pw-K3v8z1q5"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """PostgreSQL + an authenticated MLflow server on it; yields ``(pg, server, db_uri, tmp)``."""
    reason = servers.postgres_missing() or servers.auth_missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("pgstore")
    with servers.postgres() as pg:
        db_uri = pg.create_database("mlflow", "mlflow", DB_PASSWORD)
        auth_uri = pg.create_database("mlflow_auth", "mlflow", DB_PASSWORD)
        with servers.mlflow_server(db_uri, tmp / "server", auth_db_uri=auth_uri, auth_cache_s=60,
                                   env={"PGPASSWORD": DB_PASSWORD}) as server:
            server.create_user(USER, PASSWORD)
            yield pg, server, db_uri, tmp


@pytest.fixture(scope="module")
def swept(store):
    """The sweep, run once for the tests below by `iclf sweep ... --address` (a driver process of
    its own, so that everything it, Tune and the trials print is captured): yields
    ``(finished process, sweep directory, worker nodes)``."""
    from ray.cluster_utils import Cluster

    pg, server, _, tmp = store
    private = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # Ray's sockets hang off it: short
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = private
    cluster = None
    try:
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 0, "include_dashboard": False})
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        spec = write_tiny_spec(tmp, "pgauth", "lora.rank: {grid: [0, 4]}", epochs=2)
        # The login is in the driver's environment only: the nodes' raylets (and so their worker
        # processes) were started before it, without it.
        done = _iclf(["sweep", str(spec), f"tracking.uri={server.url}", "--address",
                      cluster.address], MLFLOW_TRACKING_USERNAME=USER,
                     MLFLOW_TRACKING_PASSWORD=PASSWORD)
        yield done, tmp / "ray" / "pgauth", workers
    finally:
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(private, ignore_errors=True)


def _client(server):
    """A client logged in as the researcher (MLflow reads the login from the environment)."""
    from mlflow import MlflowClient

    os.environ.update(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    return MlflowClient(server.url)


def _runs(client, name: str):
    exp = client.get_experiment_by_name(name)
    found = client.search_runs([exp.experiment_id])
    parents = [r for r in found if r.data.tags.get("iclf.role") == "sweep"]
    kids = [r for r in found if r.data.tags.get("iclf.role") == "trial"]
    return parents, kids


def test_cluster_sweep_logs_to_postgresql_through_the_authenticated_server(store, swept):
    _, server, _, _ = store
    done, _, workers = swept
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "[iclf] sweep pgauth: 2 finished, 0 failed of 2 trials" in done.stdout
    client = _client(server)
    parents, kids = _runs(client, "pgauth")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == 2 and {r.data.tags["config_key"] for r in kids} == {"lora.rank=0",
                                                                         "lora.rank=4"}
    for run in kids:
        rid = run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for key in ("epoch", "val/R1", "val/mAP", "val/mINP", "train/loss"):
            assert [m.step for m in client.get_metric_history(rid, key)] == [1, 2], (rid, key)
        for key in ("test/R1", "test/mAP", "test/mINP"):
            assert len(client.get_metric_history(rid, key)) == 1, (rid, key)
    assert {r.data.tags["node_id"] for r in kids} == {w.node_id for w in workers}


def test_the_runs_are_in_postgresql(store, swept):
    from mlflow import MlflowClient

    _, _, db_uri, _ = store
    os.environ["PGPASSWORD"] = DB_PASSWORD
    try:
        direct = MlflowClient(db_uri)  # the database itself, not through the server
        parents, kids = _runs(direct, "pgauth")
    finally:
        os.environ.pop("PGPASSWORD", None)
    assert len(parents) == 1 and len(kids) == 2
    assert {r.info.status for r in parents + kids} == {"FINISHED"}


def _secrets(store) -> list[str]:
    _, server, _, _ = store
    return [PASSWORD, DB_PASSWORD, server.admin[1]]


def test_no_login_no_access_and_no_secret_in_any_run(store, swept):
    _, server, _, tmp = store
    done, sweep_dir, _ = swept
    path = "/api/2.0/mlflow/experiments/search?max_results=5"
    assert server.request(path)[0] == 401
    assert server.request(path, auth=(USER, "wrong-password-123"))[0] == 401
    assert server.request(path, auth=("nobody", PASSWORD))[0] == 401
    assert server.request(path, auth=(USER, PASSWORD))[0] == 200
    status, _ = server.request("/api/2.0/mlflow/runs/search", body={"experiment_ids": ["1"]},
                               method="POST")
    assert status == 401

    client = _client(server)
    parents, kids = _runs(client, "pgauth")
    secrets = _secrets(store)
    download = Path(tempfile.mkdtemp(dir=tmp))
    n_files = 0
    for run in parents + kids:
        values = [*run.data.params.values(), *run.data.tags.values(), *run.data.params,
                  *run.data.tags, *run.data.metrics]
        for s in secrets:
            assert not [v for v in values if s in v], (run.info.run_id, s)
        local = Path(client.download_artifacts(run.info.run_id, "", str(download / run.info.run_id)))
        for f in local.rglob("*"):
            if f.is_file():
                n_files += 1
                data = f.read_bytes()
                assert not [s for s in secrets if s.encode() in data], f
    assert n_files >= 2 * len(kids) + 2  # configs.yaml + weights per trial, the spec + report
    # Nor in the sweep's Ray directory (experiment state, trial directories, error files)...
    assert (sweep_dir / "sweep.json").is_file()
    for f in sweep_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not [s for s in secrets if s.encode() in data], f
    # ... nor in anything the driver, Tune or the trials (forwarded by Ray) printed.
    printed = done.stdout + done.stderr
    assert "pgauth" in printed and "2 done of 2 (final)" in printed  # iclf's table of trials too
    assert not [s for s in secrets if s in printed]


def _iclf(args: list[str], **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "iclf", *args], capture_output=True, text=True,
                          timeout=900, env=full, cwd=ROOT)


def test_a_wrong_password_is_one_line_exit_2(store, swept):
    _, server, _, tmp = store
    out = _iclf(["summary", "pgauth", "--tracking-uri", server.url, "--no-log", "--out",
                 str(tmp / "report")], MLFLOW_TRACKING_USERNAME=USER,
                MLFLOW_TRACKING_PASSWORD="not-the-password")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == (
        f"error: the MLflow server {server.url} refused the login of user '{USER}' (HTTP 401): "
        "check MLFLOW_TRACKING_PASSWORD (and MLFLOW_TRACKING_USERNAME)")
    out = _iclf(["summary", "pgauth", "--tracking-uri", server.url, "--no-log", "--out",
                 str(tmp / "report")], MLFLOW_TRACKING_USERNAME="", MLFLOW_TRACKING_PASSWORD="")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: the MLflow server {server.url} asks for a login (HTTP 401): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    # A sweep with a wrong password stops before it creates anything.
    again = write_tiny_spec(tmp, "pgwrong", "lora.rank: {grid: [0]}")
    out = _iclf(["sweep", str(again), f"tracking.uri={server.url}", "--quiet"],
                MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD="not-the-password")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"error: the MLflow server {server.url} refused the login of user '{USER}'")
    assert not (tmp / "ray" / "pgwrong").exists()
    # With the right one, `iclf summary` reads the sweep back through the server.
    out = _iclf(["summary", "pgauth", "--tracking-uri", server.url, "--no-log", "--out",
                 str(tmp / "report")], MLFLOW_TRACKING_USERNAME=USER,
                MLFLOW_TRACKING_PASSWORD=PASSWORD)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sweep pgauth: 2 of 2 trials finished" in out.stdout


def test_iclf_ui_serves_the_postgresql_store_on_loopback_without_login(store, swept):
    _, _, db_uri, tmp = store
    port = servers.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PGPASSWORD": DB_PASSWORD}
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "iclf", "ui", "--tracking-uri", db_uri,
                             "--port", str(port), "--quiet"], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=tmp, start_new_session=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/#/experiments/(\d+)/runs", line)
        assert match, line
        ui = servers.MlflowServer(match[1], proc, tmp / "none")
        status, text = ui.request("/api/2.0/mlflow/runs/search", method="POST",
                                  body={"experiment_ids": [match[2]], "max_results": 10})
        assert status == 200 and text.count('"iclf.role"') == 3  # parent + 2 trials
        rest = [proc.stdout.readline() for _ in range(3)]  # charts, parent run, database
        assert "tracking database: " + db_uri in rest[-1], rest
    finally:
        servers.stop_group(proc)


def test_iclf_ui_on_the_server_points_at_the_server_itself(store, swept):
    _, server, _, _ = store
    out = _iclf(["ui", "pgauth", "--tracking-uri", server.url], MLFLOW_TRACKING_USERNAME=USER,
                MLFLOW_TRACKING_PASSWORD=PASSWORD)
    assert out.returncode == 0, out.stderr[-2000:]
    view = r"\?workflowType=machine_learning&viewStateShareKey=iclf-[0-9a-f]{32}"
    assert re.fullmatch(rf"MLflow UI for sweep pgauth: {re.escape(server.url)}/#/experiments/\d+/"
                        rf"runs{view} \(served by the tracking server; log in there\)\n"
                        rf"  charts: {re.escape(server.url)}/#/experiments/\d+/runs{view}"
                        r"&compareRunsMode=CHART\n", out.stdout)
