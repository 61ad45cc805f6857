"""The MLflow UI as a child process: started on a tracking store, bound to one address, ended with
its whole process group (its workers included) on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

__all__ = ["serve_ui", "port_free", "next_free_port"]


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (nothing else listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def next_free_port(host: str, start: int, tries: int = 50) -> int | None:
    """The first free port from ``start`` on, or None."""
    return next((p for p in range(start, start + tries) if port_free(host, p)), None)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> str | None:
    """None once the server answers ``/health``; else what went wrong, with the real timing."""
    import urllib.request

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        code = proc.poll()
        if code is not None:
            return (f"the MLflow server exited after {time.monotonic() - t0:.1f} s (exit code "
                    f"{code}) before it answered")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return None
        except OSError:
            time.sleep(0.5)
    return f"the MLflow server did not answer within {time.monotonic() - t0:.0f} s"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its workers may linger a moment
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)




def serve_ui(uri: str, *, host: str, port: int, timeout: float, quiet: bool,
             on_ready: Callable[[str], None]) -> int:
    """Run ``mlflow server`` on tracking store ``uri`` at ``host:port`` until Ctrl-C or SIGTERM;
    ``on_ready(base_url)`` once it answers. Returns the server's exit code (0 on Ctrl-C). Raises
    TimeoutError when it does not answer within ``timeout`` seconds."""
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
           "--workers", "1"]
    env = dict(os.environ)
    # The store URI through the environment, not the command line, which `ps` shows to everyone
    # (a PostgreSQL URI may carry a password).
    env["MLFLOW_BACKEND_STORE_URI"] = uri
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # The server and its workers get their own process group, ended as one below; SIGTERM to us
    # (a test, a process manager) unwinds through the same `finally` as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL if quiet else None,
                            stderr=subprocess.DEVNULL if quiet else None, start_new_session=True)
    try:
        problem = _wait_ready(base, proc, timeout)
        if problem is not None:
            raise TimeoutError(f"{problem} on {host}:{port}")
        on_ready(base)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _end_group(proc)
        signal.signal(signal.SIGTERM, previous)
