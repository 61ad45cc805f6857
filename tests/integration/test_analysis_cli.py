"""`iclf summary`, `iclf best`, `iclf reproduce` and `iclf ui` on a real finished sweep (real Ray Tune,
the engine, MLflow on SQLite): two configurations x two seeds of the tiny model."""

import json
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("mlflow")
psutil = pytest.importorskip("psutil")

from mlflow import MlflowClient  # noqa: E402

from iclf.analysis.tables import parse_markdown  # noqa: E402
from iclf.cli import main  # noqa: E402
from iclf.config import load_config  # noqa: E402
from tiny_sweep import run_rank_sweep, start_ui  # noqa: E402

@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return tmp, run_rank_sweep(tmp, "cli")


def _client(tmp: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp}/mlflow.db")


def _parent(tmp: Path) -> str:
    return json.loads((tmp / "ray" / "cli" / "sweep.json").read_text())["parent_run_id"]


def test_summary_prints_writes_and_relogs(sweep, capsys, tmp_path):
    tmp, spec = sweep
    out = tmp_path / "report"
    assert main(["summary", str(spec), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sweep cli: 4 of 4 trials finished" in text and "baseline lora.rank=0" in text
    assert "lora.rank=4" in text and "parameter importance (val/R1): lora.rank" in text
    for name in ("summary.csv", "summary.md", "summary.tex", "importance.png",
                 "metric_vs_params.png", "cost_benefit.png", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    table = parse_markdown((out / "summary.md").read_text())
    assert len(table) == 2
    arts = {a.path for a in _client(tmp).list_artifacts(_parent(tmp), "report")}
    assert "report/summary.md" in arts and "report/curves.png" in arts
    # By name, through the tracking URI, is the same sweep.
    assert main(["summary", "cli", "--tracking-uri", str(tmp / "mlflow.db"), "--no-log",
                 "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "summary.md").read_text() == (out / "summary.md").read_text()


def test_best_prints_and_exports_a_trainable_config(sweep, capsys, tmp_path):
    tmp, spec = sweep
    dest = tmp_path / "best.yaml"
    assert main(["best", str(spec), "--json", "--export", str(dest)]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["config_key"] in ("lora.rank=0", "lora.rank=4")
    assert facts["metrics"]["val/R1"]["n"] == 2 and facts["metrics"]["test/R1"]["mean"] is not None
    cfg = load_config(dest)
    rank = facts["params"]["lora.rank"]
    assert (cfg.lora.rank if cfg.lora else 0) == rank and cfg.seed == facts["trial_seed"]
    assert dest.read_text().startswith("# Best configuration of sweep cli")
    assert main(["train", str(dest), "--dry-run"]) == 0
    assert main(["best", str(spec)]) == 0
    assert "best configuration of sweep cli by mean val/R1" in capsys.readouterr().out


def test_reproduce_is_exact_on_cpu_and_detects_a_planted_difference(sweep, capsys, tmp_path):
    tmp, spec = sweep
    assert main(["reproduce", str(spec), "--output-dir", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reproduced: max |difference| 0.0000 points, tolerance 0" in out
    new_id = re.search(r"new MLflow run ([0-9a-f]{32})", out).group(1)
    client = _client(tmp)
    new = client.get_run(new_id)
    source = new.data.tags["iclf.source_run"]
    assert new.info.status == "FINISHED" and new.data.tags["iclf.role"] == "reproduce"
    assert new.data.metrics["repro/max_abs_diff"] == 0.0
    # The sweep's own analysis does not count the re-run as a trial.
    assert main(["best", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["val/R1"]["n"] == 2

    # Plant a difference in the record: a later test/R1 value at the same step.
    hist = client.get_metric_history(source, "test/R1")
    client.log_metric(source, "test/R1", hist[-1].value + 3.0, step=hist[-1].step,
                      timestamp=hist[-1].timestamp + 1000)
    assert main(["reproduce", source, "--tracking-uri", str(tmp / "mlflow.db"),
                 "--output-dir", str(tmp_path / "b"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced: max |difference| 3.0000 points" in out
    assert re.search(r"test/R1 .* -3\.0000", out)


def test_best_honours_mode_min(tmp_path, capsys):
    """With `mode: min` every command names the configuration with the LOWEST mean: the sweep's
    own printout, `iclf best` and the trial `iclf reproduce` would re-run (its lowest seed)."""
    # val/mAP: on the tiny sweep the two configurations can tie on val/R1
    spec = run_rank_sweep(tmp_path, "low", extra="metric: val/mAP\nmode: min\n")
    swept = capsys.readouterr().out
    assert main(["best", str(spec), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    client = _client(tmp_path)
    kids = [r for r in client.search_runs([client.get_experiment_by_name("low").experiment_id])
            if r.data.tags.get("iclf.role") == "trial"]
    by_key: dict[str, list[tuple[float, str]]] = {}
    for r in kids:
        hist = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "val/mAP")}
        value = hist[int(r.data.metrics["best_epoch"])]
        by_key.setdefault(r.data.tags["config_key"], []).append((value, r.info.run_id))
    means = {k: sum(v for v, _ in rows) / len(rows) for k, rows in by_key.items()}
    assert len(set(means.values())) == 2, f"the two configurations tie: {means}"
    lowest = min(means, key=means.get)
    assert facts["config_key"] == lowest
    assert facts["trial_run_id"] == min(by_key[lowest])[1]
    assert f"best        : {lowest}:" in swept


def test_errors_are_one_line_exit_2(sweep, capsys, tmp_path):
    tmp, _ = sweep
    assert main(["summary", "nosuch", "--tracking-uri", str(tmp / "mlflow.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no sweep named 'nosuch'") and "\n" not in err
    assert main(["best", "demo", "--tracking-uri", str(tmp_path / "none.db")]) == 2
    assert "no tracking database at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # nothing created
    assert main(["reproduce", "0" * 32, "--tracking-uri", str(tmp / "mlflow.db")]) == 2
    assert f"no MLflow run {'0' * 32}" in capsys.readouterr().err


def _get(url: str, data: dict | None = None) -> bytes:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.read()


def test_ui_serves_the_sweep_runs_and_report(sweep):
    tmp, spec = sweep
    proc, base, exp_id = start_ui(spec, cwd=tmp)
    try:
        runs = json.loads(_get(f"{base}/api/2.0/mlflow/runs/search",
                               {"experiment_ids": [exp_id], "max_results": 100}))["runs"]
        roles = [{t["key"]: t["value"] for t in r["data"]["tags"]}.get("iclf.role") for r in runs]
        assert roles.count("trial") == 4 and roles.count("sweep") == 1
        query = urllib.parse.urlencode({"path": "report/summary.md", "run_uuid": _parent(tmp)})
        summary = _get(f"{base}/get-artifact?{query}").decode()
        assert "lora.rank" in summary
        assert b"<html" in _get(base + "/").lower()
        server = psutil.Process(proc.pid).children(recursive=True)
        assert server, "iclf ui runs the MLflow server as a child process"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # SIGTERM to `iclf ui` ends the MLflow server and its workers too (no orphan on the port).
    gone, alive = psutil.wait_procs(server, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(base.rsplit(":", 1)[1]))) != 0
