"""Ctrl-C is an interrupt, not a finished sweep; one driver per sweep. Real processes and signals:
``python -m iclf.sweep.cli`` with a local Ray instance, MLflow on SQLite.

A 4-trial sweep (lora.rank {0, 4} x 2 seeds, 2 at a time): while it runs, a second driver (with
and without ``--resume``) is refused, naming the holder; once a trial has finished while another
runs, the driver gets SIGINT. It must exit 130 with one line, leave the parent run RUNNING and
labelled interrupted, mark the unfinished children interrupted, write no report; `iclf summary`
and `iclf best` say the result is partial. ``--resume`` then finishes every trial exactly once.
SIGTERM before any trial finished is an interrupt as well.
"""

import os
import re
import signal
import subprocess
import sys

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")
pytest.importorskip("psutil")

from drivers import ROOT, Driver, resume, wait_for_runs  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from tiny_sweep import write_tiny_spec  # noqa: E402

EPOCHS = 3
TRIALS = 4
LONG = 10  # epochs: the second drivers take seconds to start, the trials must outlast them


def _iclf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iclf", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iclf", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(("error:", "interrupted:"))]


@pytest.mark.slow
def test_ctrl_c_interrupts_a_second_driver_is_refused_and_resume_finishes(tmp_path):
    spec = write_tiny_spec(tmp_path, "intr", "lora.rank: {grid: [0, 4]}", seeds=(0, 1),
                           epochs=LONG)
    args = [str(spec), "--quiet", "--num-cpus", "2"]
    first = Driver(args, tmp_path / "first.log")
    try:
        client, exp_id, parent_id = wait_for_runs(
            first, tmp_path, "intr", lambda kids: any(r.info.status == "RUNNING" for r in kids),
            "running trial")
        # One driver per sweep: a second one is refused, with or without --resume, naming the holder.
        others = [_start("sweep", *args, *extra) for extra in ([], ["--resume"])]
        for other in others:
            out, err = other.communicate(timeout=300)
            assert other.returncode == 2, out + err
            lines = _error_lines(err)
            assert len(lines) == 1 and "is held by" in lines[0] and f"pid {first.proc.pid}" in \
                lines[0], err
            assert "Traceback" not in err
        wait_for_runs(first, tmp_path, "intr",
                  lambda kids: any(r.info.status == "FINISHED" for r in kids)
                  and any(r.info.status == "RUNNING" for r in kids),
                  "trial finished while another ran")
        os.killpg(first.proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
        code = first.wait(180)
        assert code == 130, f"Ctrl-C exited {code}:\n{first.tail()}"
    finally:
        left = first.end_all()
    assert not left, f"processes outlived the interrupted driver: {[p.pid for p in left]}"
    log = first.tail()
    assert "Traceback" not in log, log
    lines = _error_lines(log)
    assert len(lines) == 1, log
    match = re.fullmatch(r"interrupted: (\d) of 4 trials finished; continue with "
                         r"`iclf sweep (\S+) --resume`", lines[0])
    assert match and match.group(2) == str(spec), lines
    n_done = int(match.group(1))

    parent = client.get_run(parent_id)
    assert parent.info.status == "RUNNING"
    assert parent.data.tags["iclf.state"] == "interrupted"
    assert parent.data.tags["trials_finished"] == str(n_done)
    kids = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    done = [r for r in kids if r.info.status == "FINISHED"]
    assert len(done) == n_done >= 1 and all("interrupted" not in r.data.tags for r in done)
    others = [r for r in kids if r.info.status != "FINISHED"]
    assert others and all(r.data.tags.get("interrupted") == "true" for r in others), \
        [(r.info.status, r.data.tags.get("interrupted")) for r in others]
    assert not [a for a in client.list_artifacts(parent_id) if a.path == "report"]
    assert not (tmp_path / "ray" / "intr" / "report").exists()

    summary = _iclf("summary", str(spec), "--no-log", "--out", str(tmp_path / "partial"))
    assert summary.returncode == 0, summary.stderr
    head = summary.stdout.splitlines()[0]
    assert f"{n_done} of {TRIALS} trials finished" in head and "interrupted: partial" in head, head
    assert "running" not in head
    best = _iclf("best", str(spec))
    assert best.returncode == 0 and "partial" in best.stdout.splitlines()[0], best.stdout

    resume(args, tmp_path / "second.log", 300)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["iclf.state"] == "finished"
    assert parent.data.tags["trials_finished"] == str(TRIALS)
    kids = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(kids) == TRIALS
    for run in kids:
        rid = run.info.run_id
        assert run.info.status == "FINISHED" and "interrupted" not in run.data.tags, rid
        assert [m.step for m in client.get_metric_history(rid, "epoch")] == \
            list(range(1, LONG + 1))
        for key in ("val/R1", "val/mAP", "train/loss"):
            assert len(client.get_metric_history(rid, key)) == LONG, (rid, key)
        assert len(client.get_metric_history(rid, "test/R1")) == 1
    assert [a for a in client.list_artifacts(parent_id) if a.path == "report"]


@pytest.mark.slow
def test_sigterm_before_any_trial_finished_is_an_interrupt(tmp_path):
    spec = write_tiny_spec(tmp_path, "term", "lora.rank: {grid: [0, 4]}", seeds=(0, 1),
                           epochs=EPOCHS)
    first = Driver([str(spec), "--quiet", "--num-cpus", "2"], tmp_path / "first.log")
    try:
        client, exp_id, parent_id = wait_for_runs(
            first, tmp_path, "term", lambda kids: any(r.info.status == "RUNNING" for r in kids),
            "running trial")
        first.proc.send_signal(signal.SIGTERM)
        code = first.wait(180)
        assert code == 130, f"SIGTERM exited {code}:\n{first.tail()}"
    finally:
        left = first.end_all()
    assert not left
    log = first.tail()
    assert "Traceback" not in log, log
    assert _error_lines(log) == [f"interrupted: 0 of {TRIALS} trials finished; continue with "
                                 f"`iclf sweep {spec} --resume`"], log
    assert client.get_run(parent_id).info.status == "RUNNING"
    # the lease is released: a resumed driver may start at once
    assert not (tmp_path / "ray" / "term" / "driver.lease").exists()
