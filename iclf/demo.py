"""``iclf demo``: the newcomer's first run, what ``make demo`` calls.

It generates the synthetic person dataset (CUHK-PEDES format), pretrains the tiny CLIP backbone on
other synthetic identities, runs the retrieval-loss x fusion-depth ablation of
``ablations/demo.yaml`` on the CPU with Ray Tune, logs everything to MLflow (``runs/mlflow.db``), then prints the summary over
seeds, the best configuration and the commands that read the results. Run again, it shows the
finished sweep (or resumes an interrupted one) instead of training again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from iclf.names import STATE_FILE

__all__ = ["add_demo_parser", "run_demo", "DEMO_SPEC"]

DEMO_SPEC = Path(__file__).resolve().parent.parent / "ablations" / "demo.yaml"

DESCRIPTION = """\
Run the demo sweep on the CPU: synthetic dataset + tiny pretrained backbone + ablations/demo.yaml
(retrieval loss ITC or SDM x fusion depth 0 or 1, 3 seeds, 12 trials), then print the summary, the
best configuration and how to open the MLflow UI. Everything goes under ./runs (the MLflow database
is runs/mlflow.db), the data under ./data and the backbone under ./.cache. Running it again shows
the finished sweep.
"""


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="the newcomer's demo sweep on synthetic data (CPU)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of the demo spec (e.g. seeds=[0])")
    p.add_argument("--spec", default=str(DEMO_SPEC), help="the spec to run (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="the spec's smoke version (seconds)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs for Ray (default: all)")
    p.set_defaults(func=run_demo)
    return p


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_demo(args: argparse.Namespace) -> int:
    from iclf.config import ConfigError
    from iclf.sweep.spec import load_spec
    from iclf.sweep.storage import sweep_paths

    t0 = time.perf_counter()
    try:
        spec = load_spec(args.spec, args.overrides, smoke=args.smoke)
    except ConfigError as exc:
        from iclf.errors import UsageError

        raise UsageError(str(exc)) from None
    from iclf.sweep import tune as sweep_tune
    from iclf.sweep.lease import LeaseHeld

    paths = sweep_paths(spec)
    sweep_dir, uri = paths.sweep_dir, paths.tracking_uri
    state_file = sweep_dir / STATE_FILE
    resume = False
    # what the printed commands name the sweep by (its directory: the spec's name is not the sweep's
    # with --smoke)
    spec_arg = _rel(sweep_dir) if args.smoke else _rel(Path(args.spec))
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        done = _parent_finished(uri, state.get("parent_run_id"))
        if done:
            print(f"[iclf demo] the demo sweep already ran ({_rel(sweep_dir)}): showing its results. "
                  f"`make clean` (or rm -r runs) starts over.", flush=True)
        else:
            print(f"[iclf demo] continuing the interrupted demo sweep at {_rel(sweep_dir)}",
                  flush=True)
            resume = True
    else:
        done = False
    if not done:
        print(f"[iclf demo] sweep {spec.sweep_name}: {spec.num_trials()} trials "
              f"({' x '.join(spec.param_keys)}, seeds {list(spec.seeds)}) on the CPU; data, tiny "
              f"backbone and MLflow under ./data, ./.cache and ./runs", flush=True)
        try:
            outcome = sweep_tune.run_sweep(spec, resume=resume, num_cpus=args.num_cpus, verbose=1)
        except (sweep_tune.SweepError, LeaseHeld) as exc:
            from iclf.errors import UsageError

            raise UsageError(str(exc)) from None
        if outcome.interrupted or not outcome.completed:
            print(f"interrupted: {outcome.finished} of {outcome.trials} trials finished; "
                  f"`iclf demo` again continues it", file=sys.stderr, flush=True)
            return 130
        print(f"[iclf demo] sweep done in {outcome.timings.get('total_s', 0):.0f} s: "
              f"{outcome.finished} finished, {outcome.failed} failed of {outcome.trials} trials",
              flush=True)

    from iclf.sweep.cli import cmd_best, cmd_summary

    print("\n== summary over seeds (iclf summary) ==", flush=True)
    # The sweep by its directory and tracking URI (the spec's name is not the sweep's with --smoke);
    # the report the sweep that just ran wrote and logged is shown as it is, not computed again.
    cmd_summary(argparse.Namespace(sweep=str(sweep_dir), tracking_uri=uri, out=None, no_log=False,
                                   written_by_sweep=not done and bool(outcome.report)))
    print("\n== best configuration (iclf best) ==", flush=True)
    cmd_best(argparse.Namespace(sweep=str(sweep_dir), tracking_uri=uri, export=None, json=False))
    db = _rel(Path(uri[len("sqlite:///"):])) if uri.startswith("sqlite:///") else uri
    print(f"""
== next ==
  iclf ui {spec_arg}                 MLflow UI on {db} (http://127.0.0.1:5000), the sweep's runs
  iclf best {spec_arg} --export best.yaml && iclf train best.yaml
  iclf reproduce {spec_arg}          re-run the best trial outside Tune (difference 0 on CPU)
  iclf summary {spec_arg}            tables (CSV, Markdown, LaTeX) and plots under {_rel(sweep_dir)}/report
[iclf demo] {time.perf_counter() - t0:.0f} s""", flush=True)
    return 0


def _parent_finished(uri: str, parent_run_id: str | None) -> bool:
    if not parent_run_id:
        return False
    from iclf.tracking.mlflow import connect

    try:
        return connect(uri).get_run(parent_run_id).info.status == "FINISHED"
    except Exception:  # noqa: BLE001 - the database was removed: run the sweep again
        return False
