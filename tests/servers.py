"""Real servers for the cluster-tracking tests and bench/tracking_load.py, on 127.0.0.1 only.

* :func:`postgres`: a private PostgreSQL from the distribution's binaries (``pg_config --bindir``,
  else ``/usr/lib/postgresql/*/bin``): ``initdb`` in a temporary directory, a free port on
  127.0.0.1, its unix socket in that directory, password (scram) logins over TCP, stopped and
  removed at the end. PostgreSQL refuses to run as root: as root, the server runs as the
  ``postgres`` system user (else ``nobody``) through ``runuser``.
* :func:`mlflow_server`: ``mlflow server`` on a backend store, optionally with MLflow's basic-auth
  app (an admin user bootstrapped from a password, the auth tables in their own database), its
  process group ended at the end.

:func:`postgres_missing` / :func:`auth_missing` say why either cannot run here (a test skips with
that reason).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path

DRIVER = "postgresql+psycopg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are, or None."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for d in candidates:
        if all((Path(d) / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres", "psql")):
            return Path(d)
    return None


def _server_user() -> str | None:
    """The non-root user to run PostgreSQL as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return ""


def postgres_missing() -> str | None:
    """Why a private PostgreSQL cannot run here, or None."""
    if postgres_bindir() is None:
        return ("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql "
                "(.ci/run does, as root)")
    user = _server_user()
    if user == "" or (user is not None and shutil.which("runuser") is None):
        return "running as root without a 'postgres' or 'nobody' user and runuser"
    if importlib.util.find_spec("psycopg") is None:
        return "the PostgreSQL driver is not installed: make install EXTRAS=cluster"
    return None


def auth_missing() -> str | None:
    """Why MLflow's basic-auth app cannot run here, or None."""
    if importlib.util.find_spec("flask_wtf") is None:
        return "flask-wtf (MLflow's basic-auth app needs it) is not installed: make install " \
               "EXTRAS=cluster"
    return None


@dataclass
class Postgres:
    """A running private PostgreSQL: superuser ``postgres`` with ``password`` over TCP."""

    bindir: Path
    root: Path
    port: int
    password: str
    run_as: str | None
    host: str = "127.0.0.1"

    def psql(self, *sql: str, db: str = "postgres") -> str:
        cmd = [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host,
               "-p", str(self.port), "-U", "postgres", "-d", db, "-At"]
        for s in sql:
            cmd += ["-c", s]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PGPASSWORD": self.password})
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str, owner: str, password: str) -> str:
        """Create a login role (if new) and a database it owns; returns the URI (no password: give
        it through PGPASSWORD)."""
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{owner}'").strip()
        if not exists:
            self.psql(f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'")
        self.psql(f"CREATE DATABASE {name} OWNER {owner}")
        return f"{DRIVER}://{owner}@{self.host}:{self.port}/{name}"

    def uri(self, name: str, owner: str, password: str | None = None) -> str:
        auth = f"{owner}:{password}" if password else owner
        return f"{DRIVER}://{auth}@{self.host}:{self.port}/{name}"


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    return cmd if user is None else ["runuser", "-u", user, "--", *cmd]


@contextlib.contextmanager
def postgres(durable: bool = False):
    """Start a private PostgreSQL; yields :class:`Postgres`. ``durable=False`` turns fsync off
    (tests); the benchmark keeps PostgreSQL's defaults."""
    reason = postgres_missing()
    if reason:
        raise RuntimeError(reason)
    bindir = postgres_bindir()
    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))  # short: the socket path hangs off it
    password = secrets.token_urlsafe(16)
    started = False
    try:
        (root / "pw").write_text(password + "\n")
        if user is not None:
            info = pwd.getpwnam(user)
            for p in (root, root / "pw"):
                os.chown(p, info.pw_uid, info.pw_gid)
        os.chmod(root, 0o700)
        data = root / "data"
        init = subprocess.run(_as_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                                        "--auth-local=trust", "--auth-host=scram-sha-256",
                                        f"--pwfile={root / 'pw'}", "-E", "UTF8", "--no-sync",
                                        "--no-instructions"], user),
                              capture_output=True, text=True, timeout=300)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-2000:]}")
        (root / "pw").unlink()
        port = free_port()
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300"
                + ("" if durable else " -c fsync=off -c synchronous_commit=off"))
        start = subprocess.run(_as_user([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts,
                                         "-l", str(root / "server.log"), "-w", "-t", "120",
                                         "start"], user),
                               capture_output=True, text=True, timeout=180)
        started = True
        if start.returncode != 0:
            log = (root / "server.log").read_text(errors="replace")[-2000:] \
                if (root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {start.stderr.strip()} {log}")
        yield Postgres(bindir, root, port, password, user)
    finally:
        if started:
            subprocess.run(_as_user([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m",
                                     "fast", "-w", "-t", "60", "stop"], user),
                           capture_output=True, text=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MlflowServer:
    url: str
    proc: subprocess.Popen
    log: Path
    admin: tuple[str, str] | None = None
    users: dict[str, str] = field(default_factory=dict)

    def request(self, path: str, *, auth: tuple[str, str] | None = None, body: dict | None = None,
                method: str | None = None) -> tuple[int, str]:
        """``(status, text)`` of one REST call (``auth``: basic-auth user and password)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth is not None:
            req.add_header("Authorization",
                           "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def create_user(self, username: str, password: str) -> None:
        status, text = self.request("/api/2.0/mlflow/users/create", auth=self.admin,
                                    body={"username": username, "password": password},
                                    method="POST")
        if status != 200:
            raise RuntimeError(f"creating user {username}: HTTP {status} {text[:300]}")
        self.users[username] = password


@contextlib.contextmanager
def mlflow_server(backend_uri: str, workdir: Path, *, auth_db_uri: str | None = None,
                  auth_cache_s: int = 0, env: dict[str, str] | None = None, workers: int = 1,
                  port: int | None = None, timeout: float = 180):
    """``mlflow server`` on 127.0.0.1 with ``backend_uri`` and artifacts under ``workdir``; with
    ``auth_db_uri``, MLflow's basic-auth app (user store there, admin ``admin`` with a random
    password, default permission READ; ``auth_cache_s``: how long a worker trusts a checked
    password, MLflow's ``auth_cache_ttl_seconds``, 0 = off as by default). ``env`` adds variables (PGPASSWORD for a PostgreSQL
    store). Yields :class:`MlflowServer`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server_env = {**os.environ, **(env or {}), "MLFLOW_BACKEND_STORE_URI": backend_uri,
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        server_env.pop(key, None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--artifacts-destination", str(workdir / "mlartifacts"), "--workers", str(workers)]
    admin = None
    if auth_db_uri is not None:
        admin = ("admin", secrets.token_urlsafe(16))
        ini = workdir / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = {auth_db_uri}\nadmin_username = admin\n"
                       "authorization_function = "
                       "mlflow.server.auth:authenticate_request_basic_auth\n"
                       f"auth_cache_ttl_seconds = {int(auth_cache_s)}\n")
        server_env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
                          MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
        cmd += ["--app-name", "basic-auth"]
    log = workdir / "mlflow-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=server_env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=workdir, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", proc, log, admin)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {proc.returncode}: "
                                   f"{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not ready in {timeout:.0f} s: "
                                   f"{log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        yield server
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a process group we started (its leader's pid), SIGKILL what is left after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait  # the leader is gone; its workers may linger a moment
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
