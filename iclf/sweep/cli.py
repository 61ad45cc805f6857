"""``iclf sweep SPEC.yaml [key=value ...] [--address ADDR] [--resume] [--smoke]``.

Registered into the main ``iclf`` command by :func:`add_sweep_parser`; also runs on its own as
``python -m iclf.sweep.cli``. Importing this module does not import Ray or MLflow.

Exit codes: 0 every trial finished; 1 the sweep completed but some trials failed; 2 a bad spec or a
sweep that cannot start/resume; 130 interrupted (the sweep can be continued with ``--resume``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

DESCRIPTION = """\
Run an ablation sweep: a Ray Tune experiment (grid, random or Optuna TPE search; ASHA or FIFO) whose
trials train with the iclf engine and log to MLflow (one parent run per sweep, a child run per trial).

  iclf sweep ablations/demo.yaml                        the CPU demo (synthetic data, tiny model)
  iclf sweep ablations/lora_rank.yaml --smoke           the CI smoke version of a spec
  iclf sweep ablations/loss_weights.yaml variant=tpe seeds=[0] training.epochs=30
  iclf sweep ablations/joint.yaml --address auto        on a running Ray cluster
  iclf sweep ablations/demo.yaml --resume               continue an interrupted sweep

key=value pairs override the spec (num_samples, seeds, search.algorithm, scheduler.grace_period,
variant, storage_path, tracking.uri, ...) or, for any other dotted key, the experiment
(training.epochs=2, optim.lr=1e-4). By default everything goes under ./runs/: runs/mlflow.db,
runs/ray/<sweep>/ (Ray results, checkpoints, each trial's run directory).
"""


class _IntermixedParser(argparse.ArgumentParser):
    """Accepts ``key=value`` overrides before and after the flags (``SPEC --smoke a=1 b=2``), which a
    plain parser refuses once an optional has ended the positional list."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("sweep", help="run an ablation sweep (Ray Tune + Optuna + MLflow)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _IntermixedParser  # the subparsers object decides the class; only parsing differs
    p.add_argument("spec", help="ablation spec YAML (ablations/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec or experiment overrides")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join ('auto' = the cluster started with `ray start` on this "
                        "node); default: start a local Ray instance")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep of this spec (unfinished and errored trials)")
    p.add_argument("--smoke", action="store_true", help="apply the spec's smoke: block (CI)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the local Ray instance (default: all); ignored with --address")
    p.add_argument("--quiet", action="store_true", help="no Ray progress table")
    p.set_defaults(func=run_sweep)
    return p


def run_sweep(args: argparse.Namespace) -> int:
    """Run the sweep the parsed arguments describe; returns the exit code."""
    from iclf.config import ConfigError
    from iclf.sweep.spec import load_spec

    try:
        spec = load_spec(args.spec, args.overrides, smoke=args.smoke)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from iclf.sweep import tune as sweep_tune
    from iclf.tracking.errors import TrackingError

    print(f"[iclf] sweep {spec.sweep_name}: {spec.num_trials()} trials "
          f"({spec.search.algorithm} search, {spec.scheduler.name} scheduler, seeds "
          f"{list(spec.seeds)}), metric {spec.metric} ({spec.mode})", flush=True)
    try:
        outcome = sweep_tune.run_sweep(spec, address=args.address, resume=args.resume,
                                       num_cpus=args.num_cpus, verbose=0 if args.quiet else 1)
    except (sweep_tune.SweepError, ConfigError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    if not outcome.completed:
        return 130
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iclf.sweep.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sweep_parser(sub)
    args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
