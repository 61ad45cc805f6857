"""Sweeps on a multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head without CPUs and two
1-CPU worker nodes on this machine), driven by ``run_sweep(spec, address=cluster.address)``:

* a smoke sweep whose two trials run one on each worker node (the ``node_id`` tag of their MLflow
  runs), all FINISHED;
* a worker node removed while its trial trains: the trial fails with the node, is retried (from its
  checkpoint, on the other node) and the sweep completes with every child FINISHED and no duplicate
  run or metric step.

The cluster keeps its Ray temp directory (and so its address file) in a private directory: a plain
``ray.init()`` elsewhere on the machine must not find it and join it.
"""

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from iclf.sweep.spec import load_spec  # noqa: E402
from iclf.sweep.tune import run_sweep  # noqa: E402
from tiny_sweep import sweep_runs, write_tiny_spec  # noqa: E402


@pytest.fixture
def cluster():
    """Head (0 CPUs, no dashboard) + two 1-CPU worker nodes, in a private Ray temp directory."""
    private = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths hang off it
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = private
    c = None
    try:
        c = Cluster(initialize_head=True,
                    head_node_args={"num_cpus": 0, "include_dashboard": False})
        workers = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        yield c, workers
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if c is not None:
            c.shutdown()
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(private, ignore_errors=True)


def write_spec(tmp: Path, name: str, epochs: int):
    return load_spec(write_tiny_spec(tmp, name, "lora.rank: {grid: [0, 4]}", epochs=epochs))


def check_complete(client, parents, kids, epochs: int) -> None:
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(kids) == 2
    assert {r.data.tags["config_key"] for r in kids} == {"lora.rank=0", "lora.rank=4"}
    for run in kids:
        rid = run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for key in ("epoch", "val/R1", "train/loss"):
            assert [m.step for m in client.get_metric_history(rid, key)] == list(
                range(1, epochs + 1)), (rid, key)
        assert len(client.get_metric_history(rid, "test/R1")) == 1


@pytest.mark.slow
def test_trials_run_on_both_nodes(tmp_path, cluster):
    c, workers = cluster
    spec = write_spec(tmp_path, "nodes", epochs=2)
    outcome = run_sweep(spec, address=c.address, verbose=0)
    assert outcome.completed and (outcome.finished, outcome.failed) == (2, 0)
    client, parents, kids = sweep_runs(tmp_path, "nodes")
    check_complete(client, parents, kids, epochs=2)
    assert parents[0].data.tags["ray_address"] == c.address
    assert {r.data.tags["node_id"] for r in kids} == {w.node_id for w in workers}


@pytest.mark.slow
def test_node_removed_mid_sweep(tmp_path, cluster):
    c, workers = cluster
    epochs = 4
    spec = write_spec(tmp_path, "lose", epochs=epochs)
    by_id = {w.node_id: w for w in workers}
    removed: dict[str, str] = {}
    stop = threading.Event()

    def remove_a_busy_node():
        """Once a trial has logged its second epoch (so Tune holds its first checkpoint), remove the
        node it runs on."""
        client = None
        while not stop.is_set():
            time.sleep(0.5)
            db = tmp_path / "mlflow.db"
            if client is None:
                if not (tmp_path / "ray" / "lose" / "sweep.json").is_file():
                    continue  # the driver creates the database first
                client = MlflowClient(f"sqlite:///{db}")
            exp = client.get_experiment_by_name("lose")
            busy = [r for r in client.search_runs([exp.experiment_id], "tags.`iclf.role` = 'trial'")
                    if r.info.status == "RUNNING" and r.data.metrics.get("epoch", 0) >= 2
                    and r.data.tags.get("node_id") in by_id]
            if busy:
                run = busy[0]
                removed.update(node=run.data.tags["node_id"], run=run.info.run_id)
                c.remove_node(by_id[removed["node"]])
                return

    watcher = threading.Thread(target=remove_a_busy_node, daemon=True)
    watcher.start()
    try:
        outcome = run_sweep(spec, address=c.address, verbose=0)
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert removed, "no trial logged two epochs while both nodes were up"
    assert outcome.completed and (outcome.finished, outcome.failed) == (2, 0)
    client, parents, kids = sweep_runs(tmp_path, "lose")
    check_complete(client, parents, kids, epochs=epochs)  # two runs: the retry reopened its own
    survivor = ({w.node_id for w in workers} - {removed["node"]}).pop()
    hit = next(r for r in kids if r.info.run_id == removed["run"])
    assert hit.data.tags["retries"] == "1"
    events = [json.loads(line) for line in
              (Path(hit.data.tags["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    starts = [e["resumed_from_epoch"] for e in events if e["event"] == "start"]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 1, starts  # from its checkpoint
    # Both trials ended on the surviving node: the retried one moved there.
    assert {r.data.tags["node_id"] for r in kids} == {survivor}


@pytest.mark.slow
def test_local_sweep_beside_a_running_cluster_starts_its_own_ray(cluster):
    """Without --address, `iclf sweep` starts a local Ray instance even when a cluster started on
    this machine (`ray start --head`) has left its address file: joining it with num_cpus raises."""
    from iclf.sweep.tune import _init_ray

    assert _init_ray(None, 1) is True
    try:
        assert ray.cluster_resources().get("CPU") == 1.0  # not the cluster's 2 worker CPUs
    finally:
        ray.shutdown()
