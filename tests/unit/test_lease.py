"""One driver per sweep: the lease file (iclf.sweep.lease) with real processes and files."""

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iclf.sweep import lease
from iclf.sweep.lease import LEASE_FILE, LeaseHeld, acquire, held_by_live_driver, read_lease


def _try(sweep_dir: str, barrier, results) -> None:
    barrier.wait()
    try:
        held = acquire(Path(sweep_dir))
    except LeaseHeld:
        results.put("refused")
        return
    results.put("acquired")
    time.sleep(2)  # hold it while the others try
    held.release()


def test_of_drivers_starting_at_once_exactly_one_holds_the_sweep(tmp_path):
    ctx = mp.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_try, args=(str(tmp_path / "sweep"), barrier, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in range(n))
    assert outcomes == ["acquired"] + ["refused"] * (n - 1)
    assert not (tmp_path / "sweep" / LEASE_FILE).exists()  # released


def test_a_live_holder_is_named_and_refused_a_dead_one_is_taken_over(tmp_path):
    held = acquire(tmp_path)
    try:
        record = read_lease(tmp_path)
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert held_by_live_driver(tmp_path)
        with pytest.raises(LeaseHeld, match=rf"is held by another driver \(host \S+ pid "
                                            rf"{os.getpid()}, last heartbeat"):
            acquire(tmp_path)
    finally:
        held.release()
    assert read_lease(tmp_path) is None

    # A holder on this host whose process is gone (a SIGKILLed driver): taken over at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    now = time.time()
    (tmp_path / LEASE_FILE).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": int(dead.stdout), "token": "old", "started": now,
         "heartbeat": now}))
    assert not held_by_live_driver(tmp_path)
    with acquire(tmp_path) as mine:
        assert read_lease(tmp_path)["token"] == mine.token != "old"

    # Another host: alive while its heartbeat is fresh, dead once it is older than STALE_S.
    other = {"host": "node-7", "pid": 1, "token": "far", "started": now, "heartbeat": time.time()}
    (tmp_path / LEASE_FILE).write_text(json.dumps(other))
    with pytest.raises(LeaseHeld, match="host node-7 pid 1"):
        acquire(tmp_path)
    other["heartbeat"] = time.time() - lease.STALE_S - 1
    (tmp_path / LEASE_FILE).write_text(json.dumps(other))
    with acquire(tmp_path) as mine:
        assert read_lease(tmp_path)["token"] == mine.token


def test_the_heartbeat_renews_and_notices_a_takeover(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.2)
    lost = []
    held = acquire(tmp_path, on_lost=lost.append)
    try:
        first = read_lease(tmp_path)["heartbeat"]
        time.sleep(0.7)
        assert read_lease(tmp_path)["heartbeat"] > first
        # another driver took it over (this one looked dead to it)
        record = dict(read_lease(tmp_path), token="theirs", pid=12345)
        (tmp_path / LEASE_FILE).write_text(json.dumps(record))
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lost and "taken over" in lost[0] and "pid 12345" in lost[0]
    finally:
        held.release()
    assert read_lease(tmp_path)["token"] == "theirs"  # never removes a lease it does not hold


def test_an_unreadable_lease_counts_as_dead(tmp_path):
    (tmp_path / LEASE_FILE).write_text("{half a rec")
    with acquire(tmp_path) as mine:
        assert read_lease(tmp_path)["token"] == mine.token


def test_a_sweep_that_stops_before_writing_anything_leaves_no_directory(tmp_path):
    """A driver refused by the tracking server (a wrong password) stops with only its lease written:
    releasing it removes the sweep's directory it created, never one that was there or holds files."""
    new = tmp_path / "ray" / "new"
    acquire(new).release()
    assert not new.exists() and (tmp_path / "ray").is_dir()
    existing = tmp_path / "ray" / "existing"
    existing.mkdir()
    acquire(existing).release()
    assert existing.is_dir()
    written = tmp_path / "ray" / "written"
    held = acquire(written)
    (written / "sweep.json").write_text("{}")
    held.release()
    assert (written / "sweep.json").is_file()
