"""A sweep driver (``python -m iclf.sweep.cli ARGS``) as a real process the tests can signal, kill
and clean up after: it runs in its own process group with a local Ray instance whose processes are
its descendants, and every descendant seen while it ran is remembered so that none outlives a test."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


class Driver:
    """``python -m iclf.sweep.cli ARGS`` in its own process group; remembers every descendant."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.out = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "iclf.sweep.cli", *args], cwd=ROOT,
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.root = psutil.Process(self.proc.pid)
        self.seen: dict[int, psutil.Process] = {self.proc.pid: self.root}

    def record(self) -> None:
        try:
            for child in self.root.children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None when still running after ``timeout`` seconds (recording meanwhile)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.record()
            if self.proc.poll() is not None:
                return self.proc.returncode
            time.sleep(0.5)
        return None

    def kill_group(self) -> None:
        self.record()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def survivors(self, grace: float) -> list[psutil.Process]:
        """Recorded processes still alive after ``grace`` seconds (the same processes: psutil checks
        the creation time, so a reused PID is not mistaken for one of them)."""
        procs = [p for p in self.seen.values() if p.pid != self.proc.pid]
        _, alive = psutil.wait_procs(procs, timeout=grace)
        return alive

    def end_all(self) -> list[psutil.Process]:
        """SIGKILL, by PID, every recorded process still alive; returns those it had to kill."""
        if self.proc.poll() is None:
            self.kill_group()
        alive = self.survivors(grace=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        self.out.close()
        return alive

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def resume(args: list[str], log: Path, timeout: float) -> None:
    """``ARGS --resume`` to its end: it must exit 0 within ``timeout`` seconds and leave no process
    of its own behind."""
    driver = Driver([*args, "--resume"], log)
    try:
        code = driver.wait(timeout)
        assert code == 0, f"--resume exited {code}:\n{driver.tail()}"
    finally:
        leftover = driver.end_all()
    assert not leftover, f"processes outlived the resumed driver: {[p.pid for p in leftover]}"


def wait_for_runs(driver: Driver, tmp: Path, name: str, ready, what: str, timeout: float = 240):
    """Poll the sweep's MLflow runs until ``ready(kids)``; returns ``(client, exp_id, parent_id)``."""
    from mlflow import MlflowClient

    state = tmp / "ray" / name / "sweep.json"
    client = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.wait(0.3) is None, f"the sweep ended before {what}:\n{driver.tail()}"
        if client is None:
            if not state.is_file():
                continue
            parent_id = json.loads(state.read_text())["parent_run_id"]
            client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
            exp_id = client.get_run(parent_id).info.experiment_id
        kids = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
        if ready(kids):
            return client, exp_id, parent_id
    pytest.fail(f"no {what} within {timeout} s:\n{driver.tail()}")
