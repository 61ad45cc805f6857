"""The sweep commands: ``iclf sweep`` runs one; ``iclf summary``, ``iclf best``, ``iclf reproduce``
and ``iclf ui`` read one back from MLflow (:mod:`iclf.sweep.results`).

Registered into the main ``iclf`` command by :func:`add_sweep_parser` and
:func:`add_results_parsers`; ``iclf sweep`` also runs on its own as ``python -m iclf.sweep.cli``.
Importing this module imports neither Ray nor MLflow.

``iclf sweep`` exit codes: 0 every trial finished; 1 the sweep completed but some trials failed; 2 a
bad spec or a sweep that cannot start/resume; 130 interrupted (continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from iclf.arguments import IntermixedParser, OneLineParser
from iclf.errors import UsageError
from iclf.names import DEFAULT_DB, SOURCE_RUN_TAG

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
DEFAULT_UI_PORT = 5000
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
SWEEP_HELP = ("the sweep: its spec file (ablations/demo.yaml), its Ray directory (runs/ray/demo) or "
              "its name (demo)")
URI_HELP = f"MLflow tracking URI or SQLite file (default: the spec's, else {DEFAULT_DB})"

DESCRIPTION = """\
Run an ablation sweep: a Ray Tune experiment (grid, random or Optuna TPE search; ASHA or FIFO) whose
trials train with the iclf engine and log to MLflow (one parent run per sweep, a child run per trial).

  iclf sweep ablations/demo.yaml                        the CPU demo (synthetic data, tiny model)
  iclf sweep ablations/lora_rank.yaml --smoke           the CI smoke version of a spec
  iclf sweep ablations/loss_weights.yaml variant=tpe seeds=[0] training.epochs=30
  iclf sweep ablations/joint.yaml --address auto        on a running Ray cluster
  iclf sweep ablations/demo.yaml --resume               continue an interrupted sweep
  iclf sweep ablations/lora_rank.yaml --dry-run         the plan: trials, resources, device-hours

key=value pairs override the spec (num_samples, seeds, search.algorithm, scheduler.grace_period,
variant, storage_path, tracking.uri, ...) or, for any other dotted key, the experiment
(training.epochs=2, optim.lr=1e-4). By default everything goes under ./runs/: runs/mlflow.db,
runs/ray/<sweep>/ (Ray results, checkpoints, each trial's run directory).
"""


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("sweep", help="run an ablation sweep (Ray Tune + Optuna + MLflow)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = IntermixedParser  # the subparsers object decides the class; only parsing differs
    p.add_argument("spec", help="ablation spec YAML (ablations/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec or experiment overrides")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto' = the cluster started with `ray start` on this "
                        "node); default: start a local Ray instance")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep of this spec (unfinished and errored trials)")
    p.add_argument("--smoke", action="store_true", help="apply the spec's smoke: block (CI)")
    p.add_argument("--num-cpus", type=_at_least_one, default=None,
                   help="CPUs of the local Ray instance (default: all); ignored with --address")
    p.add_argument("--quiet", action="store_true", help="no progress table")
    p.add_argument("--verbose", action="store_true",
                   help="Ray Tune's own progress output (TensorBoard hint, a line per checkpoint) "
                        "instead of iclf's table of trials (swept parameters, epoch, the metric, "
                        "its best so far, val/mAP, samples/s)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and exit: the trials (configuration x seed, or the search "
                        "space), resources per trial, how many run at once here and the projected "
                        "device-hours (from the same configurations' earlier runs in the tracking "
                        "store, or --measure); starts no Ray, writes nothing")
    p.add_argument("--measure", action="store_true",
                   help="project the device-hours from a few timed training steps of the base "
                        "configuration (and a timed slice of its evaluation) for trials without "
                        "earlier runs; with or without --dry-run")
    p.set_defaults(func=run_sweep)
    return p


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_sweep(args: argparse.Namespace) -> int:
    """Run the sweep the parsed arguments describe; returns the exit code."""
    from iclf.config import ConfigError
    from iclf.sweep.spec import load_spec

    try:
        spec = load_spec(args.spec, args.overrides, smoke=args.smoke)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = None
    if args.dry_run or args.measure:
        from iclf.data.errors import DatasetError
        from iclf.engine.checkpoint import CheckpointError
        from iclf.models.weights import WeightsError
        from iclf.sweep.plan import Machine, make_plan

        try:
            plan = make_plan(spec, machine=Machine.here(args.num_cpus), measure=args.measure)
        except (ConfigError, DatasetError, WeightsError, CheckpointError, OSError) as exc:
            print("error: --measure: " + " ".join(str(exc).split()), file=sys.stderr)
            return 2
        if args.dry_run:
            print("\n".join(plan.describe()), flush=True)
            return 0
    from iclf.sweep import tune as sweep_tune
    from iclf.tracking.errors import TrackingError

    print(f"[iclf] sweep {spec.sweep_name}: {spec.num_trials()} trials "
          f"({spec.search.algorithm} search, {spec.scheduler.name} scheduler, seeds "
          f"{list(spec.seeds)}), metric {spec.metric} ({spec.mode})", flush=True)
    from iclf.sweep.lease import LeaseHeld

    resume_hint = f"continue with `iclf sweep {args.spec} --resume`"
    try:
        outcome = sweep_tune.run_sweep(spec, address=args.address, resume=args.resume,
                                       num_cpus=args.num_cpus, verbose=0 if args.quiet else 2 if args.verbose else 1,
                                       plan=plan)
    except (sweep_tune.SweepError, ConfigError, TrackingError, LeaseHeld) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the sweep's record existed: nothing ran
        from iclf.sweep.storage import sweep_paths

        print(f"interrupted: before any trial started; {resume_hint}"
              if sweep_paths(spec).state_file.is_file() else
              "interrupted: before the sweep started; nothing to resume", file=sys.stderr)
        return 130
    if outcome.interrupted:
        print(f"interrupted: {outcome.finished} of {outcome.trials} trials finished; {resume_hint}",
              file=sys.stderr, flush=True)
        return 130
    print(f"[iclf] sweep {outcome.sweep}: {outcome.finished} finished, {outcome.failed} failed of "
          f"{outcome.trials} trials", flush=True)
    print(f"[iclf]   Ray results : {outcome.sweep_dir}")
    print(f"[iclf]   MLflow      : {outcome.tracking_uri} (parent run {outcome.parent_run_id})")
    if outcome.completed:
        _print_best(outcome, spec.metric, spec.mode)
    if outcome.report:
        report_dir = Path(outcome.report[0]).parent
        print(f"[iclf]   report      : {report_dir} (also in the parent run's artifacts)")
        table = report_dir / "summary.txt"
        if table.is_file():
            print(table.read_text().rstrip())
    return 0 if outcome.failed == 0 else 1


def _print_best(outcome, metric: str, mode: str) -> None:
    """The best configuration by its mean over seeds of the validation metric (under ``mode``)."""
    from iclf.analysis import best, summarize_sweep
    from iclf.tracking.mlflow import load_sweep_frames

    trials, _ = load_sweep_frames(outcome.tracking_uri, outcome.parent_run_id)
    if trials.empty or metric not in trials or not (trials["status"] == "FINISHED").any():
        return
    summary = summarize_sweep(trials, metrics=[metric], primary=metric, mode=mode)
    key = best(summary, mode)
    if key is None:
        return
    row = summary.table[summary.table["config_key"] == key].iloc[0]
    print(f"[iclf]   best        : {key or '(base)'}: {metric} {row[f'{metric} mean']:.2f} "
          f"(mean of {int(row[f'{metric} n'])} seeds; test metrics in MLflow)")


# ------------------------------------------------------------------ reading a sweep back


def cmd_summary(args: argparse.Namespace) -> int:
    from iclf.sweep.results import (
        partial_note, resolve_sweep, sweep_frames, sweep_state, write_sweep_report)
    from iclf.tracking.reporter import load_retrieval

    ref = resolve_sweep(args.sweep, args.tracking_uri)
    if args.out:
        out = Path(args.out)
    elif ref.storage is not None and ref.storage.parent.is_dir():
        out = ref.storage / "report"
    else:
        out = Path("runs") / "reports" / ref.name
    # written_by_sweep: `iclf demo` right after its sweep, whose finalize wrote and logged this
    # very report: print it as it is
    written_by_sweep = getattr(args, "written_by_sweep", False)
    if not written_by_sweep:
        trials, curves = sweep_frames(ref)
        write_sweep_report(trials, curves, out, baseline=ref.baseline(), metric=ref.metric,
                           mode=ref.mode,
                           retrieval=lambda run_id: load_retrieval(ref.client, run_id))
    facts = json.loads((out / "report.json").read_text())
    note = partial_note(sweep_state(ref))
    planned = ref.parent.data.tags.get("trials_planned", "")
    total = max(int(planned), facts["n_trials"]) if planned.isdigit() else facts["n_trials"]
    print(f"sweep {ref.name}: {facts['n_finished']} of {total} trials finished, "
          f"{facts['n_configurations']} configurations, "
          f"{facts['total_device_hours']:.3f} device-hours; metric {ref.metric}"
          + (f", baseline {facts['baseline_key']}" if facts.get("baseline_key") else "")
          + (f" ({note})" if note else ""))
    print((out / "summary.txt").read_text().rstrip())
    importance = {k: v for k, v in facts.get("importance", {}).items()}
    if importance:
        shown = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a"
                          for k, v in sorted(importance.items(), key=lambda kv: -(kv[1] or 0)))
        print(f"parameter importance ({ref.metric}): {shown}")
    print(f"report: {out.resolve()}")
    if written_by_sweep:
        print(f"logged to MLflow run {ref.parent_run_id} (artifacts/report) by the sweep")
    elif not args.no_log:
        ref.client.log_artifacts(ref.parent_run_id, str(out), "report")
        print(f"logged to MLflow run {ref.parent_run_id} (artifacts/report)")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from iclf.sweep.results import (
        best_facts, export_best, fmt_mean_std, partial_note, resolve_sweep)

    ref = resolve_sweep(args.sweep, args.tracking_uri)
    facts = best_facts(ref)
    if args.export:
        facts["exported"] = str(export_best(ref, facts["trial_run_id"], Path(args.export), facts))
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    note = partial_note(facts["state"])
    print(f"best configuration of sweep {ref.name} by mean {ref.metric} over seeds "
          f"({facts['seeds'].count(',') + 1} seeds: {facts['seeds']})"
          + (f" ({note})" if note else "") + ":")
    print(f"  {facts['config_key'] or '(base)'}")
    for m, v in facts["metrics"].items():
        print(f"  {m:<10} {fmt_mean_std(v['mean'], v['std']):>16}  (n={v['n']})")
    if facts.get("trainable_params") is not None:
        print(f"  trainable parameters: {int(facts['trainable_params']):,}")
    print(f"  best trial: MLflow run {facts['trial_run_id']} (seed {facts['trial_seed']})")
    if args.export:
        print(f"exported to {facts['exported']}: iclf train {facts['exported']}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from iclf.sweep.reproduce import reproduce_run
    from iclf.sweep.results import best_facts, connect_existing, resolve_sweep
    from iclf.tracking.uri import resolve_tracking_uri

    target = args.target
    if RUN_ID.match(target) and not Path(target).exists():
        uri = resolve_tracking_uri(args.tracking_uri, DEFAULT_DB)
        client = connect_existing(uri)
        try:
            run = client.get_run(target)
        except Exception:  # noqa: BLE001 - MlflowException: no such run
            raise UsageError(f"no MLflow run {target} in {uri}") from None
        label = f"run {target}"
    else:
        ref = resolve_sweep(target, args.tracking_uri)
        facts = best_facts(ref)
        client, uri = ref.client, ref.tracking_uri
        run = client.get_run(facts["trial_run_id"])
        label = (f"the best trial of sweep {ref.name}: {facts['config_key'] or '(base)'} seed "
                 f"{facts['trial_seed']} (run {run.info.run_id})")
    if run.info.status != "FINISHED":
        raise UsageError(f"MLflow run {run.info.run_id} is {run.info.status}: only a finished trial can "
                     f"be reproduced")
    print(f"reproducing {label} outside Ray Tune ...", flush=True)
    try:
        comparison, new_id = reproduce_run(client, run, output_dir=args.output_dir,
                                           tolerance=args.tolerance, device=args.device,
                                           progress=False if args.no_progress else None)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(comparison.table())
    verdict = "reproduced" if comparison.ok else "NOT reproduced"
    print(f"{verdict}: max |difference| {comparison.max_abs_difference:.4f} points, tolerance "
          f"{comparison.tolerance:g}; new MLflow run {new_id} (tag {SOURCE_RUN_TAG}="
          f"{run.info.run_id})")
    return 0 if comparison.ok else 1


def cmd_ui(args: argparse.Namespace) -> int:
    from iclf.sweep.results import connect_existing, resolve_sweep
    from iclf.tracking.server import serve_ui
    from iclf.tracking.store import is_server, redact
    from iclf.tracking.uri import resolve_tracking_uri

    if args.sweep is None and args.tracking_uri is None and not Path(DEFAULT_DB).is_file():
        raise UsageError(f"no tracking database at {Path(DEFAULT_DB).resolve()}: run a sweep first "
                         f"(iclf sweep ablations/demo.yaml) or pass --tracking-uri")
    try:
        ref = resolve_sweep(args.sweep, args.tracking_uri)
        uri, exp_id, what = ref.tracking_uri, ref.experiment_id, f"sweep {ref.name}"
    except Exception as exc:  # noqa: BLE001 - no sweep yet: open the UI on the database anyway
        if args.sweep is not None:
            raise
        uri = resolve_tracking_uri(args.tracking_uri, DEFAULT_DB)
        connect_existing(uri)
        ref, exp_id, what = None, None, f"no sweep yet ({exc})"
    from iclf.tracking.view import view_url

    parent = _comparison_view(ref) if ref is not None else None

    def pages(base: str) -> tuple[str, str | None]:
        if exp_id is None:
            return base, None
        return (view_url(base, exp_id, parent),
                view_url(base, exp_id, parent, chart=True) if parent is not None else None)

    if is_server(uri):  # an MLflow server (a cluster's) is its own UI
        table, charts = pages(uri)
        print(f"MLflow UI for {what}: {table} (served by the tracking server; log in there)")
        if charts is not None:
            print(f"  charts: {charts}")
        return 0

    from iclf.tracking.server import next_free_port, port_free

    port = args.port
    if port is None:
        port = next_free_port(args.host, DEFAULT_UI_PORT)
        if port is None:
            raise UsageError(f"no free port from {DEFAULT_UI_PORT} on {args.host}: pass --port")
        if port != DEFAULT_UI_PORT:
            print(f"port {DEFAULT_UI_PORT} on {args.host} is in use (another server?): serving on "
                  f"{port} instead", flush=True)
    elif not port_free(args.host, port):
        raise UsageError(f"port {port} on {args.host} is in use (another MLflow server?); its pages "
                         f"would not be this database's: stop it, or pass another --port")

    def ready(base: str) -> None:
        table, charts = pages(base)
        print(f"MLflow UI for {what}: {table}", flush=True)
        if charts is not None:
            print(f"  charts (every trial's {ref.metric} per epoch, parameters against it): "
                  f"{charts}", flush=True)
        if ref is not None:
            print(f"  the sweep's parent run: {base}/#/experiments/{exp_id}/runs/"
                  f"{ref.parent_run_id} (summary tables and plots under Artifacts > report)",
                  flush=True)
        print(f"  tracking database: {redact(uri)}; stop with Ctrl-C", flush=True)

    try:
        return serve_ui(uri, host=args.host, port=port, timeout=args.timeout,
                        quiet=args.quiet, on_ready=ready)
    except TimeoutError as exc:
        raise UsageError(str(exc)) from None


def _comparison_view(ref) -> str | None:
    """The parent run id whose comparison view (:mod:`iclf.tracking.view`) the UI opens on; a
    sweep recorded before views existed gets its view now. None when it cannot be written (a
    read-only login): the URL then opens the plain run table."""
    from iclf.tracking.view import ComparisonView, has_view, swept_params, write_view

    try:
        tags = ref.client.get_experiment(ref.experiment_id).tags
        if not has_view(tags, ref.parent_run_id):
            params = swept_params(ref.resolved_spec())
            write_view(ref.client, ref.experiment_id,
                       ComparisonView(ref.name, ref.parent_run_id, params, ref.metric, ref.mode))
    except Exception as exc:  # noqa: BLE001 - MlflowException (permission), TrackingError
        print(f"[iclf] no comparison view for sweep {ref.name}: {exc}", file=sys.stderr)
        return None
    return ref.parent_run_id


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
print the URL of the sweep's comparison view: every trial a row, ranked by the sweep's metric, with
the swept parameters, val/R1, val/mAP, val/mINP, test/R1 and trainable parameters as columns; and
of its charts (the metric per epoch for every trial, parameters against it). Ctrl-C stops it.

  iclf ui                       the latest sweep in runs/mlflow.db
  iclf ui ablations/demo.yaml --port 5001
"""


def add_results_parsers(subparsers) -> None:
    """Register ``summary``, ``best``, ``reproduce`` and ``ui``: reading a sweep back."""
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
    p.add_argument("--port", type=int, default=None,
                   help="port; refused when something else listens there (default: 5000, or the "
                        "next free port after it)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the UI to the network)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the server")
    p.add_argument("--quiet", action="store_true", help="hide the server's own log")
    p.set_defaults(func=cmd_ui)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m iclf.sweep.cli SPEC ...``: the ``iclf sweep`` command on its own."""
    parser = OneLineParser(prog="python -m iclf.sweep.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sweep_parser(sub)
    try:
        args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
