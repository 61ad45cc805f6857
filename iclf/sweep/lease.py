"""One driver per sweep: a lease file in the sweep's directory.

``<storage>/<sweep>/driver.lease`` is a small JSON record: the holder's host, pid and process start
time, a random token, when it started and its last heartbeat. A driver holds the lease for as long
as it runs the sweep:

* it is **created** with ``O_CREAT | O_EXCL``, so of two drivers starting at once exactly one gets it
  (on a local filesystem and on NFSv3+ alike);
* it is **renewed** every :data:`HEARTBEAT_S` seconds by a daemon thread, each time written to a
  temporary file and renamed over the lease (a reader never sees half a record);
* a second driver, with or without ``--resume``, is **refused** while the holder is alive, with a
  one-line error naming it;
* a lease whose holder is **dead** is taken over: on the holder's own host when its pid is gone (or
  belongs to another process, by start time), from any host when its heartbeat is older than
  :data:`STALE_S` seconds. The stale file is first renamed away, which only one contender can do;
* it is **released** (deleted) when the driver ends, however it ends short of SIGKILL; a SIGKILLed
  driver leaves a lease that the next ``--resume`` takes over as above.

If the heartbeat finds that the lease now carries another token (another driver took it over after
this one stalled longer than :data:`STALE_S`), the holder is told through ``on_lost``: it stops.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

LEASE_FILE = "driver.lease"
HEARTBEAT_S = 10.0
STALE_S = 60.0  # a heartbeat older than this means a dead holder, whatever its host


class LeaseHeld(RuntimeError):
    """Another live driver holds the sweep (the message names it)."""


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - no such process, no psutil, no permission
        return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written by a foreign tool: treated as stale
    return data if isinstance(data, dict) else {}


def holder_alive(record: dict[str, Any], now: float | None = None) -> bool:
    """Whether the driver a lease record names still runs (see the module docstring)."""
    now = time.time() if now is None else now
    heartbeat = record.get("heartbeat")
    if not isinstance(heartbeat, (int, float)):
        return False
    if record.get("host") == socket.gethostname():
        pid = record.get("pid")
        if not isinstance(pid, int):
            return False
        started = _process_start(pid)
        if started is None:
            return False  # the pid is gone
        recorded = record.get("process_start")
        if isinstance(recorded, (int, float)) and abs(started - recorded) > 1.0:
            return False  # the pid was reused by another process
        return True
    return now - heartbeat < STALE_S


def describe(record: dict[str, Any], now: float | None = None) -> str:
    """``host:pid, heartbeat 3 s ago``."""
    now = time.time() if now is None else now
    beat = record.get("heartbeat")
    age = f", last heartbeat {now - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
    return f"host {record.get('host', '?')} pid {record.get('pid', '?')}{age}"


def read_lease(sweep_dir: Path) -> dict[str, Any] | None:
    """The lease record of a sweep, or None when no driver holds or held it."""
    return _read(Path(sweep_dir) / LEASE_FILE)


def held_by_live_driver(sweep_dir: Path) -> bool:
    """Whether a live driver holds the sweep (what "running" means)."""
    record = read_lease(sweep_dir)
    return bool(record) and holder_alive(record)


@dataclass
class Lease:
    """A lease this process holds; :meth:`release` it (or use it as a context manager)."""

    path: Path
    record: dict[str, Any]
    on_lost: Callable[[str], None] | None = None
    made_dir: bool = False  # acquire created the sweep's directory: release removes it if empty

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="iclf-lease", daemon=True)
        self._thread.start()

    @property
    def token(self) -> str:
        return self.record["token"]

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = _read(self.path)
            if not current or current.get("token") != self.token:
                if self.on_lost is not None:
                    who = describe(current) if current else "nobody (the file is gone)"
                    self.on_lost(f"the lease {self.path} was taken over by {who}")
                return
            self.record["heartbeat"] = time.time()
            _write_atomic(self.path, self.record)

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        current = _read(self.path)
        if current and current.get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        if self.made_dir:  # a sweep that stopped before writing anything leaves nothing behind
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _write_atomic(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create the lease file with ``record``; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def acquire(sweep_dir: Path, *, on_lost: Callable[[str], None] | None = None,
            what: str = "sweep") -> Lease:
    """Take the lease of the sweep in ``sweep_dir`` (created if missing); :class:`LeaseHeld` when a
    live driver holds it. A dead holder's lease is taken over."""
    sweep_dir = Path(sweep_dir)
    made_dir = not sweep_dir.is_dir()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LEASE_FILE
    now = time.time()
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "process_start": _process_start(os.getpid()), "token": secrets.token_hex(8),
              "started": now, "heartbeat": now}
    for _ in range(5):
        if _create(path, record):
            return Lease(path, record, on_lost, made_dir)
        current = _read(path)
        if current is None:
            continue  # released meanwhile: try again
        if current and holder_alive(current):
            raise LeaseHeld(f"{what} {sweep_dir.name} is held by another driver ({describe(current)}"
                            f"); wait for it, or stop it and run --resume")
        # Dead holder: move its lease aside. Only one contender can rename a given file; a loser
        # finds the file gone (or a fresh lease in its place) and tries again.
        aside = path.with_name(f".{LEASE_FILE}.stale.{record['token']}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        taken = _read(aside)
        if taken and taken.get("token") != current.get("token") and holder_alive(taken):
            os.rename(aside, path)  # a live lease appeared in between: put it back, refuse
            raise LeaseHeld(f"{what} {sweep_dir.name} is held by another driver ({describe(taken)})")
        aside.unlink(missing_ok=True)
    raise LeaseHeld(f"{what} {sweep_dir.name}: could not take the lease {path} (contended)")


__all__ = ["LEASE_FILE", "HEARTBEAT_S", "STALE_S", "Lease", "LeaseHeld", "acquire", "read_lease",
           "held_by_live_driver", "holder_alive", "describe"]
