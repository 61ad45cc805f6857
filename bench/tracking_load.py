"""Benchmark: concurrent trial loggers against the three tracking stores.

N logger processes (default 8, 32 and 64), each standing for one trial: it logs a batch of 10
metrics (one step) every 100 ms for ``--duration`` seconds through the project's tracking layer
(:func:`iclf.tracking.mlflow.connect`: MLflow's client with :mod:`iclf.tracking.retry`), into its
own run. A call that takes longer than the interval delays the next one (no catching up), so each
logger sends at most duration / interval batches, and stops sending at the deadline; a call in
flight then finishes (or gives up within the retry budget). The stores, all on 127.0.0.1:

* ``sqlite``: a SQLite file, opened directly by every logger (what a single machine does);
* ``server-sqlite``: an MLflow server (default 4 workers) on a SQLite file (the old cluster advice);
* ``server-postgres``: an MLflow server (4 workers) with MLflow's basic-auth app on a private
  PostgreSQL (the distribution's binaries, default durability settings), each logger logging in
  as a user of the server, with MLflow's auth cache on (60 s): the cluster setup the README
  recommends. ``server-postgres-nocache`` (only when asked for in ``--stores``): the same with the
  auth cache off, MLflow's default, where every request checks the password hash;
  ``server-postgres-nologin``: the same server without MLflow's login.

For each store and N: points sent (batches attempted x 10), points written (read back from the
store after the loggers ended: every metric history of every run), lost (sent, not written),
duplicated (written more than once), calls that raised (after the retry layer gave up), calls that
were retried, batches per second achieved, and the p50 / p99 / max latency of one log call
(retries included). Prints one JSON object; ``--out`` also writes it to a file.

``--quick`` checks that the script works: 2 and 4 loggers for 3 s each, all three stores.

Usage: python bench/tracking_load.py [--loggers 8,32,64] [--duration 60] [--interval 0.1]
       [--stores sqlite,server-sqlite,server-postgres] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/servers.py: the private PostgreSQL and servers

STORES = ("sqlite", "server-sqlite", "server-postgres")
# The recommended server without MLflow's auth cache, and without a login at all.
EXTRA_STORES = ("server-postgres-nocache", "server-postgres-nologin")
KEYS = tuple(f"m{i}" for i in range(10))


def _setup(uri: str, n: int, env: dict, queue) -> None:
    """(In a child process.) One experiment with ``n`` runs; puts their ids on ``queue``."""
    os.environ.update(env)
    from iclf.tracking.mlflow import connect, ensure_experiment

    client = connect(uri)
    exp = ensure_experiment(client, f"load-{n}-{secrets.token_hex(3)}")
    queue.put((exp, [client.create_run(exp, run_name=f"logger-{i}").info.run_id
                     for i in range(n)]))


def _logger(uri: str, run_id: str, env: dict, start: "mp.Value", duration: float,
            interval: float, ready, queue) -> None:
    """(In a child process.) Connect, say so, wait for the common start, then log a batch of 10
    metrics every ``interval`` s until the deadline; put the counts and latencies on ``queue``."""
    os.environ.update(env)
    import io
    from contextlib import redirect_stderr

    from mlflow.entities import Metric

    from iclf.tracking.mlflow import connect

    client = connect(uri)
    ready.release()
    while start.value == 0:
        time.sleep(0.02)
    start_at = start.value
    time.sleep(max(0.0, start_at - time.time()))
    latencies, sent, failed, retried, errors = [], 0, 0, 0, []
    deadline = start_at + duration
    max_calls = int(round(duration / interval))
    step = 0
    next_at = start_at
    rng = random.Random(run_id)
    while time.time() < deadline and step < max_calls:
        ts = int(time.time() * 1000)
        batch = [Metric(k, rng.random(), ts, step) for k in KEYS]
        sink = io.StringIO()
        t0 = time.perf_counter()
        try:
            with redirect_stderr(sink):  # the retry layer's notices: counted, not printed
                client.log_batch(run_id, metrics=batch)
        except Exception as exc:  # noqa: BLE001 - counted: these points are lost, loudly
            failed += 1
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        latencies.append(time.perf_counter() - t0)
        retried += "retrying" in sink.getvalue()
        sent += len(batch)
        step += 1
        next_at = max(next_at + interval, time.time())  # late: no catching up
        time.sleep(max(0.0, next_at - time.time()))
    queue.put({"run_id": run_id, "sent": sent, "calls": step, "failed_calls": failed,
               "retried_calls": retried, "latencies": latencies, "errors": errors[:3]})


def _read_back(db_uri: str, run_ids: list[str], env: dict, queue) -> None:
    """(In a child process.) From the store's database itself (faster than thousands of REST
    calls through a login): points written for these runs, and how many (run, key, step) were
    written more than once."""
    os.environ.update(env)
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_uri)
    ids = ", ".join(f"'{r}'" for r in run_ids)
    with engine.connect() as conn:
        written, distinct = conn.execute(sqlalchemy.text(
            "SELECT count(*), count(DISTINCT run_uuid || '/' || key || '/' || CAST(step AS TEXT)) "
            f"FROM metrics WHERE run_uuid IN ({ids})")).one()
    engine.dispose()
    queue.put((int(written), int(written) - int(distinct)))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_case(uri: str, db_uri: str, db_env: dict, n: int, env: dict, duration: float,
             interval: float) -> dict:
    ctx = mp.get_context("fork")  # the parent never opens a store: nothing shared but code
    queue = ctx.Queue()
    p = ctx.Process(target=_setup, args=(uri, n, env, queue))
    p.start()
    _, run_ids = queue.get(timeout=600)
    p.join()
    ready = ctx.Semaphore(0)
    start = ctx.Value("d", 0.0)  # the common start time, set once every logger is connected
    procs = [ctx.Process(target=_logger, args=(uri, rid, env, start, duration, interval, ready,
                                               queue)) for rid in run_ids]
    t_spawn = time.time()
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire(timeout=600)
    connect_s = time.time() - t_spawn
    start.value = time.time() + 1.0
    t0 = time.time()
    results = [queue.get(timeout=duration + 900) for _ in procs]
    wall = time.time() - t0
    for proc in procs:
        proc.join(timeout=60)
    p = ctx.Process(target=_read_back, args=(db_uri, run_ids, db_env, queue))
    p.start()
    written, duplicated = queue.get(timeout=1800)
    p.join()
    lat = [x for r in results for x in r["latencies"]]
    sent = sum(r["sent"] for r in results)
    calls = sum(r["calls"] for r in results)
    return {
        "loggers": n, "duration_s": duration, "wall_s": round(wall, 1),
        "connect_all_s": round(connect_s, 1),
        "points_sent": sent, "points_written": written, "points_lost": max(sent - written, 0),
        "points_duplicated": duplicated,
        "calls": calls, "calls_failed": sum(r["failed_calls"] for r in results),
        "calls_retried": sum(r["retried_calls"] for r in results),
        "batches_per_s": round(calls / duration, 1),
        "batches_per_s_asked": round(n / interval, 1),
        "latency_p50_ms": round(1000 * _pct(lat, 0.50), 1),
        "latency_p99_ms": round(1000 * _pct(lat, 0.99), 1),
        "latency_max_ms": round(1000 * max(lat), 1) if lat else None,
        "latency_mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
        "errors": sorted({e for r in results for e in r["errors"]})[:5],
    }


@contextlib.contextmanager
def open_store(kind: str, work: Path):
    """A fresh store of ``kind``; yields ``(uri, the loggers' env, its database's URI and env,
    description)``."""
    import servers

    if kind == "sqlite":
        db = f"sqlite:///{work / 'direct.db'}"
        yield db, {}, db, {}, "SQLite file, opened by every logger"
        return
    if kind == "server-sqlite":
        db = f"sqlite:///{work / 'server.db'}"
        with servers.mlflow_server(db, work / "srv-sqlite", workers=4) as srv:
            yield srv.url, {}, db, {}, "mlflow server (4 workers) on a SQLite file, no login"
        return
    if kind.startswith("server-postgres"):
        cache_s = 60 if kind == "server-postgres" else 0
        login = kind != "server-postgres-nologin"
        reason = servers.postgres_missing() or servers.auth_missing()
        if reason:
            raise RuntimeError(reason)
        password = secrets.token_urlsafe(12)
        with servers.postgres(durable=True) as pg:
            db = pg.create_database("mlflow", "mlflow", password)
            auth = pg.create_database("mlflow_auth", "mlflow", password)
            db_env = {"PGPASSWORD": password}
            with servers.mlflow_server(db, work / "srv-pg", auth_db_uri=auth if login else None,
                                       workers=4, auth_cache_s=cache_s, env=db_env) as srv:
                env = {}
                if login:
                    env = {"MLFLOW_TRACKING_USERNAME": "bench",
                           "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(12)}
                    srv.create_user("bench", env["MLFLOW_TRACKING_PASSWORD"])
                version = pg.psql("SHOW server_version").strip()
                what = (f"basic-auth login, auth cache {cache_s} s" if login else "no login")
                yield srv.url, env, db, db_env, \
                    f"mlflow server (4 workers, {what}) on PostgreSQL {version}"
        return
    raise ValueError(kind)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loggers", default="8,32,64")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.loggers, args.duration = "2,4", 3.0
    counts = [int(x) for x in args.loggers.split(",")]
    stores = [s.strip() for s in args.stores.split(",")]
    unknown = set(stores) - set(STORES) - set(EXTRA_STORES)
    if unknown:
        ap.error(f"--stores: unknown {sorted(unknown)}; known: "
                 f"{', '.join(STORES + EXTRA_STORES)}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - imported once here, inherited by every forked logger

    import iclf.tracking.mlflow  # noqa: F401
    from iclf.tracking.retry import RetryPolicy

    report = {"bench": "tracking_load", "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine()},
              "interval_s": args.interval, "batch": len(KEYS), "quick": args.quick,
              "retry_budget_s": RetryPolicy.from_env().budget_s, "stores": {}}
    report["machine"]["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    t_all = time.time()
    work = Path(tempfile.mkdtemp(prefix="tload-"))
    try:
        for kind in stores:
            entry = report["stores"][kind] = {"cases": []}
            for n in counts:
                case_dir = work / f"{kind}-{n}"
                case_dir.mkdir()
                t0 = time.time()
                with open_store(kind, case_dir) as (uri, env, db_uri, db_env, what):
                    entry["store"] = what
                    case = run_case(uri, db_uri, db_env, n, env, args.duration, args.interval)
                case["case_s"] = round(time.time() - t0, 1)
                entry["cases"].append(case)
                print(f"[tracking_load] {kind} x{n}: {case['points_written']}/"
                      f"{case['points_sent']} points, {case['calls_failed']} failed calls, "
                      f"p50 {case['latency_p50_ms']} ms, p99 {case['latency_p99_ms']} ms "
                      f"({case['case_s']} s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.time() - t_all, 1)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
