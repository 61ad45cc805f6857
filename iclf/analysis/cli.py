"""``iclf summary``, ``iclf best``, ``iclf reproduce`` and ``iclf ui``: reading a sweep back.

Every command reads the sweep from MLflow, so it works on a running, finished or resumed sweep and
on another machine that shares the tracking database. ``SWEEP`` is any of: the sweep's spec file
(``ablations/demo.yaml``: its name and tracking URI come from the spec), the sweep's Ray directory
(``runs/ray/demo``) or the sweep's name (``demo``, looked up in ``--tracking-uri``, by default
``runs/mlflow.db``). Importing this module imports neither MLflow nor Ray.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclf.names import (
    DEFAULT_DB, METRIC_TAG, MODE_TAG, PARAM_PREFIX, ROLE_TAG, SOURCE_RUN_TAG, STATE_FILE,
    STORAGE_TAG, SWEEP_TAG)

__all__ = ["add_analysis_parsers", "SweepRef", "resolve_sweep"]

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")

SWEEP_HELP = ("the sweep: its spec file (ablations/demo.yaml), its Ray directory (runs/ray/demo) or "
              "its name (demo)")
URI_HELP = f"MLflow tracking URI or SQLite file (default: the spec's, else {DEFAULT_DB})"


def _usage(message: str) -> Exception:
    from iclf.cli import UsageError

    return UsageError(message)


# ---------------------------------------------------------------------------------- finding a sweep


@dataclass
class SweepRef:
    """A sweep's parent run and where it lives."""

    client: Any
    tracking_uri: str
    parent: Any  # mlflow.entities.Run

    @property
    def name(self) -> str:
        return self.parent.data.tags.get(SWEEP_TAG, self.parent.info.run_name)

    @property
    def parent_run_id(self) -> str:
        return self.parent.info.run_id

    @property
    def experiment_id(self) -> str:
        return self.parent.info.experiment_id

    @property
    def metric(self) -> str:
        return self.parent.data.tags.get(METRIC_TAG, "val/R1")

    @property
    def mode(self) -> str:
        return self.parent.data.tags.get(MODE_TAG, "max")

    @property
    def storage(self) -> Path | None:
        s = self.parent.data.tags.get(STORAGE_TAG)
        return Path(s) if s else None

    def resolved_spec(self) -> dict[str, Any]:
        """The resolved spec the sweep ran (parent artifact, else the copy in its Ray directory)."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(self.parent_run_id, "spec.resolved.json", tmp)
                return json.loads(Path(path).read_text())
            except Exception:  # noqa: BLE001 - no such artifact; try the local copy
                pass
        local = (self.storage or Path("/nonexistent")) / "spec.resolved.json"
        return json.loads(local.read_text()) if local.is_file() else {}

    def baseline(self) -> dict[str, Any] | None:
        base = self.resolved_spec().get("baseline") or None
        return dict(base) if isinstance(base, dict) else None


def _connect(uri: str):
    from iclf.tracking.errors import TrackingError
    from iclf.tracking.mlflow import connect
    from iclf.tracking.uri import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise _usage(f"no tracking database at {db}: run a sweep first (iclf sweep "
                     f"ablations/demo.yaml) or pass --tracking-uri")
    try:
        return connect(uri)
    except TrackingError as exc:
        raise _usage(str(exc)) from None


def resolve_sweep(target: str | None, tracking_uri: str | None = None) -> SweepRef:
    """Find the sweep ``target`` names (see the module docstring); ``None`` = the latest sweep."""
    from iclf.tracking.mlflow import find_sweep_run
    from iclf.tracking.uri import resolve_tracking_uri

    name = target
    parent_id = None
    uri = resolve_tracking_uri(tracking_uri, DEFAULT_DB) if tracking_uri else None
    path = Path(target) if target else None
    if path is not None and path.is_file() and path.suffix in (".yaml", ".yml"):
        from iclf.config import ConfigError
        from iclf.sweep.spec import load_spec
        from iclf.sweep.storage import sweep_paths

        try:
            spec = load_spec(path)
        except ConfigError as exc:
            raise _usage(str(exc)) from None
        paths = sweep_paths(spec)
        sweep_dir, spec_uri = paths.sweep_dir, paths.tracking_uri
        name, uri = spec.sweep_name, uri or spec_uri
        state = sweep_dir / STATE_FILE
        if state.is_file():
            parent_id = json.loads(state.read_text()).get("parent_run_id")
    elif path is not None and (path / STATE_FILE).is_file():
        state = json.loads((path / STATE_FILE).read_text())
        name, parent_id = state.get("sweep"), state.get("parent_run_id")
        uri = uri or state.get("tracking_uri")
    uri = uri or resolve_tracking_uri(None, DEFAULT_DB)
    client = _connect(uri)
    if parent_id is not None:
        try:
            return SweepRef(client, uri, client.get_run(parent_id))
        except Exception:  # noqa: BLE001 - the state file points at a run this database lacks
            pass
    if name is None:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise _usage(f"no sweep in {uri}: run one first (iclf sweep ablations/demo.yaml)")
        return SweepRef(client, uri, runs[0])
    try:
        return SweepRef(client, uri, find_sweep_run(client, name))
    except ValueError as exc:
        raise _usage(f"{exc}; give the spec file, the sweep directory or --tracking-uri") from None


def _frames(ref: SweepRef):
    from iclf.tracking.mlflow import load_sweep_frames

    trials, curves = load_sweep_frames(ref.tracking_uri, ref.parent_run_id)
    if trials.empty or not (trials["status"] == "FINISHED").any():
        state = ref.parent.info.status
        raise _usage(f"sweep {ref.name} ({ref.tracking_uri}, parent run {ref.parent_run_id}, "
                     f"{state}) has no finished trial yet")
    return trials, curves


def _summary(ref: SweepRef, trials):
    from iclf.analysis import summarize_sweep

    try:
        return summarize_sweep(trials, baseline=ref.baseline(), primary=ref.metric, mode=ref.mode)
    except ValueError:  # e.g. the baseline configuration has no finished trial (yet)
        return summarize_sweep(trials, baseline=None, primary=ref.metric, mode=ref.mode)


def _best_trial(summary, trials, metric: str) -> Any:
    """The best configuration's best seed under the sweep's mode (ties: the lowest seed): the trial
    `reproduce` re-runs."""
    from iclf.analysis import best, finished_trials

    key = best(summary, summary.mode)
    if key is None:
        raise _usage(f"no finished trial has {metric}")
    rows = finished_trials(trials)
    rows = rows[rows["config_key"].astype(str) == key].sort_values("seed")
    values = rows[metric].astype(float)
    return rows.loc[values.idxmax() if summary.mode == "max" else values.idxmin()]


# ------------------------------------------------------------------------------------ summary


def cmd_summary(args: argparse.Namespace) -> int:
    from iclf.analysis import write_report

    ref = resolve_sweep(args.sweep, args.tracking_uri)
    trials, curves = _frames(ref)
    if args.out:
        out = Path(args.out)
    elif ref.storage is not None and ref.storage.parent.is_dir():
        out = ref.storage / "report"
    else:
        out = Path("runs") / "reports" / ref.name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        baseline = ref.baseline()
        try:
            write_report(trials, curves, tmp, baseline=baseline, metric=ref.metric, mode=ref.mode)
        except ValueError:
            if baseline is None:
                raise
            baseline = None
            write_report(trials, curves, tmp, baseline=None, metric=ref.metric, mode=ref.mode)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    facts = json.loads((out / "report.json").read_text())
    status = ref.parent.info.status
    print(f"sweep {ref.name}: {facts['n_finished']} of {facts['n_trials']} trials finished, "
          f"{facts['n_configurations']} configurations, "
          f"{facts['total_device_hours']:.3f} device-hours; metric {ref.metric}"
          + (f", baseline {facts['baseline_key']}" if facts.get("baseline_key") else "")
          + ("" if status == "FINISHED" else f" (the sweep is {status.lower()}: partial)"))
    print((out / "summary.txt").read_text().rstrip())
    importance = {k: v for k, v in facts.get("importance", {}).items()}
    if importance:
        shown = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a"
                          for k, v in sorted(importance.items(), key=lambda kv: -(kv[1] or 0)))
        print(f"parameter importance ({ref.metric}): {shown}")
    print(f"report: {out.resolve()}")
    if not args.no_log:
        ref.client.log_artifacts(ref.parent_run_id, str(out), "report")
        print(f"logged to MLflow run {ref.parent_run_id} (artifacts/report)")
    return 0


# --------------------------------------------------------------------------------------- best


def _fmt(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def best_facts(ref: SweepRef) -> dict[str, Any]:
    """The best configuration by its mean over seeds of the sweep's validation metric."""
    trials, _ = _frames(ref)
    summary = _summary(ref, trials)
    trial = _best_trial(summary, trials, ref.metric)
    key = str(trial["config_key"])
    row = summary.table[summary.table["config_key"] == key].iloc[0]
    metrics = {}
    for m in summary.metrics:
        metrics[m] = {"mean": _num(row[f"{m} mean"]), "std": _num(row[f"{m} std"]),
                      "ci95": _num(row[f"{m} ci95"]), "n": int(row[f"{m} n"])}
    params = {c[len(PARAM_PREFIX):]: _plain(row[c]) for c in summary.params}
    return {"sweep": ref.name, "tracking_uri": ref.tracking_uri, "metric": ref.metric,
            "config_key": key, "params": params, "seeds": str(row["seeds"]),
            "metrics": metrics, "trial_run_id": str(trial["run_id"]), "trial_seed": int(trial["seed"]),
            "trainable_params": _plain(row.get("trainable_params"))}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def export_best(ref: SweepRef, run_id: str, dest: Path, facts: dict[str, Any]) -> Path:
    """Write the best trial's resolved config as an experiment file ``iclf train`` accepts."""
    import dataclasses

    import yaml

    from iclf.config import load_config, to_dict

    from iclf.analysis.reproduce import load_source_config

    cfg = load_source_config(ref.client, ref.client.get_run(run_id))
    cfg = dataclasses.replace(cfg, name=f"{ref.name}-best", output_dir="runs/train")
    m = facts["metrics"].get(ref.metric, {})
    header = (f"# Best configuration of sweep {ref.name} by mean {ref.metric} over seeds:\n"
              f"#   {facts['config_key'] or '(base)'}: {_fmt(m.get('mean'), m.get('std'))} "
              f"(n={m.get('n')}, seeds {facts['seeds']})\n"
              f"# From MLflow run {run_id} (seed {cfg.seed}) in {ref.tracking_uri}.\n"
              f"# Train it: iclf train {dest}\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = dest.with_name(f".{dest.name}.tmp")
    tmp_file.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    try:
        load_config(tmp_file)  # what `iclf train` will do with it
    except Exception:
        tmp_file.unlink()
        raise
    tmp_file.replace(dest)
    return dest


def cmd_best(args: argparse.Namespace) -> int:
    ref = resolve_sweep(args.sweep, args.tracking_uri)
    facts = best_facts(ref)
    if args.export:
        facts["exported"] = str(export_best(ref, facts["trial_run_id"], Path(args.export), facts))
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"best configuration of sweep {ref.name} by mean {ref.metric} over seeds "
          f"({facts['seeds'].count(',') + 1} seeds: {facts['seeds']}):")
    print(f"  {facts['config_key'] or '(base)'}")
    for m, v in facts["metrics"].items():
        print(f"  {m:<10} {_fmt(v['mean'], v['std']):>16}  (n={v['n']})")
    if facts.get("trainable_params") is not None:
        print(f"  trainable parameters: {int(facts['trainable_params']):,}")
    print(f"  best trial: MLflow run {facts['trial_run_id']} (seed {facts['trial_seed']})")
    if args.export:
        print(f"exported to {facts['exported']}: iclf train {facts['exported']}")
    return 0


# ---------------------------------------------------------------------------------- reproduce


def cmd_reproduce(args: argparse.Namespace) -> int:
    from iclf.analysis.reproduce import reproduce_run
    from iclf.tracking.uri import resolve_tracking_uri

    target = args.target
    if RUN_ID.match(target) and not Path(target).exists():
        uri = resolve_tracking_uri(args.tracking_uri, DEFAULT_DB)
        client = _connect(uri)
        try:
            run = client.get_run(target)
        except Exception:  # noqa: BLE001 - MlflowException: no such run
            raise _usage(f"no MLflow run {target} in {uri}") from None
        label = f"run {target}"
    else:
        ref = resolve_sweep(target, args.tracking_uri)
        facts = best_facts(ref)
        client, uri = ref.client, ref.tracking_uri
        run = client.get_run(facts["trial_run_id"])
        label = (f"the best trial of sweep {ref.name}: {facts['config_key'] or '(base)'} seed "
                 f"{facts['trial_seed']} (run {run.info.run_id})")
    if run.info.status != "FINISHED":
        raise _usage(f"MLflow run {run.info.run_id} is {run.info.status}: only a finished trial can "
                     f"be reproduced")
    print(f"reproducing {label} outside Ray Tune ...", flush=True)
    try:
        comparison, new_id = reproduce_run(client, run, output_dir=args.output_dir,
                                           tolerance=args.tolerance, device=args.device,
                                           progress=False if args.no_progress else None)
    except FileNotFoundError as exc:
        raise _usage(str(exc)) from None
    print(comparison.table())
    verdict = "reproduced" if comparison.ok else "NOT reproduced"
    print(f"{verdict}: max |difference| {comparison.max_abs_difference:.4f} points, tolerance "
          f"{comparison.tolerance:g}; new MLflow run {new_id} (tag {SOURCE_RUN_TAG}="
          f"{run.info.run_id})")
    return 0 if comparison.ok else 1


# ----------------------------------------------------------------------------------------- ui


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def cmd_ui(args: argparse.Namespace) -> int:
    from iclf.tracking.store import is_server, redact
    from iclf.tracking.uri import resolve_tracking_uri

    if args.sweep is None and args.tracking_uri is None and not Path(DEFAULT_DB).is_file():
        raise _usage(f"no tracking database at {Path(DEFAULT_DB).resolve()}: run a sweep first "
                     f"(iclf sweep ablations/demo.yaml) or pass --tracking-uri")
    try:
        ref = resolve_sweep(args.sweep, args.tracking_uri)
        uri, exp_id, what = ref.tracking_uri, ref.experiment_id, f"sweep {ref.name}"
    except Exception as exc:  # noqa: BLE001 - no sweep yet: open the UI on the database anyway
        if args.sweep is not None:
            raise
        uri = resolve_tracking_uri(args.tracking_uri, DEFAULT_DB)
        _connect(uri)
        exp_id, what = None, f"no sweep yet ({exc})"
    if is_server(uri):  # an MLflow server (a cluster's) is its own UI
        page = f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs" if exp_id is not None else uri
        print(f"MLflow UI for {what}: {page} (served by the tracking server; log in there)")
        return 0
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", args.host, "--port",
           str(args.port), "--workers", "1"]
    env = dict(os.environ)
    # The store URI through the environment, not the command line, which `ps` shows to everyone
    # (a PostgreSQL URI may carry a password).
    env["MLFLOW_BACKEND_STORE_URI"] = uri
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # The server and its workers get their own process group, ended as one below; SIGTERM to us
    # (a test, a process manager) unwinds through the same `finally` as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL if args.quiet else None,
                            stderr=subprocess.DEVNULL if args.quiet else None,
                            start_new_session=True)
    try:
        if not _wait_ready(base, proc, args.timeout):
            raise _usage(f"the MLflow server did not start on {args.host}:{args.port} within "
                         f"{args.timeout:.0f} s (port in use? try --port)")
        runs = f"{base}/#/experiments/{exp_id}/runs" if exp_id is not None else base
        print(f"MLflow UI for {what}: {runs}", flush=True)
        if exp_id is not None:
            print(f"  the sweep's parent run: {base}/#/experiments/{exp_id}/runs/"
                  f"{ref.parent_run_id} (summary tables and plots under Artifacts > report)",
                  flush=True)
        print(f"  tracking database: {redact(uri)}; stop with Ctrl-C", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _end_group(proc)
        signal.signal(signal.SIGTERM, previous)


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


# ------------------------------------------------------------------------------------ parsers


SUMMARY_DESC = """\
Recompute a sweep's summary from MLflow and print it: per configuration, mean, std, 95% CI and n
over seeds of validation and test R1/mAP/mINP; each configuration against the spec's baseline
(difference and a t-test over seeds); parameter importance; device-hours. Writes CSV, Markdown,
LaTeX and PNG plots (metric vs parameters, cost/benefit, curves, importance) and logs them to the
sweep's parent run (artifacts/report).

  iclf summary ablations/demo.yaml
  iclf summary demo --out paper/tables
"""

BEST_DESC = """\
Print the best configuration by the mean over seeds of the sweep's validation metric, with its
test metrics. --export writes its resolved config (the best seed's) as an experiment file:

  iclf best ablations/demo.yaml --export best.yaml && iclf train best.yaml
"""

REPRODUCE_DESC = """\
Re-run a trial's resolved config with its seed outside Ray Tune (same engine, same epochs, same CPU
threads), log it as a new MLflow run tagged iclf.source_run, print both metric sets and their
difference. Exits 1 when a difference exceeds the tolerance (default 0 on the CPU, where runs are
bit-identical; 0.5 points on a GPU).

  iclf reproduce ablations/demo.yaml          the best trial of the sweep
  iclf reproduce 0123456789abcdef0123456789abcdef --tolerance 1.0
"""

UI_DESC = """\
Start the MLflow UI (mlflow server) on the project's tracking database, bound to 127.0.0.1, and
print the URL of the sweep's run table. Ctrl-C stops it.

  iclf ui                       the latest sweep in runs/mlflow.db
  iclf ui ablations/demo.yaml --port 5001
"""


def add_analysis_parsers(subparsers) -> None:
    """Register ``summary``, ``best``, ``reproduce`` and ``ui`` on the main ``iclf`` parser."""
    raw = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser("summary", help="statistics over seeds, baseline tests, importance, "
                              "plots (from MLflow)", description=SUMMARY_DESC, formatter_class=raw)
    p.add_argument("sweep", help=SWEEP_HELP)
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.add_argument("--out", default=None,
                   help="report directory (default: <sweep dir>/report)")
    p.add_argument("--no-log", action="store_true", help="do not re-log the report to MLflow")
    p.set_defaults(func=cmd_summary)

    p = subparsers.add_parser("best", help="the best configuration (mean over seeds) and its test "
                              "metrics", description=BEST_DESC, formatter_class=raw)
    p.add_argument("sweep", help=SWEEP_HELP)
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.add_argument("--export", default=None, metavar="FILE.yaml",
                   help="write the best trial's config as an experiment file for `iclf train`")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_best)

    p = subparsers.add_parser("reproduce", help="re-run the best trial (or a run) outside Tune and "
                              "compare", description=REPRODUCE_DESC, formatter_class=raw)
    p.add_argument("target", metavar="SWEEP|RUN_ID", help=SWEEP_HELP + ", or a trial's run id")
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest accepted |difference| in points (default 0 on CPU, 0.5 on GPU)")
    p.add_argument("--device", default=None, help="override the run's device (cpu, cuda, ...)")
    p.add_argument("--output-dir", default="runs/reproduce",
                   help="where the re-run's directory goes (default runs/reproduce)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reproduce)

    p = subparsers.add_parser("ui", help="start the MLflow UI on the project's runs",
                              description=UI_DESC, formatter_class=raw)
    p.add_argument("sweep", nargs="?", default=None, help=SWEEP_HELP + " (default: the latest)")
    p.add_argument("--tracking-uri", default=None, help=URI_HELP)
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the UI to the network)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the server")
    p.add_argument("--quiet", action="store_true", help="hide the server's own log")
    p.set_defaults(func=cmd_ui)
