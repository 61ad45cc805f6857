"""Benchmark: what a sweep costs beyond its trials' training, and what ASHA saves over FIFO.

Prints one JSON object with two parts (``--part`` picks one), or a third on request.

* ``overhead``: runs the demo sweep (``ablations/demo.yaml``; ``--smoke`` for its smoke block)
  with :func:`iclf.sweep.tune.run_sweep` and compares its wall time with the trials' own training
  time: the engine's ``device_seconds`` of every child run (training, validation and the final test
  evaluation), summed and divided by the concurrency (``max_concurrent_trials``, capped by the CPUs
  per trial). ``overhead_fraction`` = 1 - (that per-slot training time) / (the sweep's wall time
  without the one-off data and backbone preparation); ``overhead_fraction_incl_prepare`` counts it
  too. ``breakdown_s``: preparation, MLflow setup, Ray start, the time inside ``Tuner.fit`` outside
  training (trial process start, model build, MLflow logging, checkpoint persistence, scheduling,
  idle slots in the tail), ASHA's driver-side test evaluation, and finalize (closing runs, the
  analysis report); ``in_trial_outside_training`` is the part of the child runs' own lifetimes
  (MLflow run start to end, per slot) not spent training. Goal: at most 15 %. ``disk``: what the
  sweep left on disk (:func:`disk_usage`). Goal: a finished trial at most 1.5x its selected
  weights.
* ``asha_vs_fifo``: the demo space and seeds with more epochs (``--epochs``), once with FIFO and
  once with ASHA on epochs (``--grace-period``, ``--reduction-factor``): trial-epochs consumed (sum
  over child runs of their last epoch), the best validation R1 (the best child run's best epoch,
  and the trial it belongs to) and the relative epoch saving. Goal: at least 40 % fewer epochs with
  the best R1 within 1 point.

Every sweep writes its Ray results and MLflow database under ``--out`` (a temporary directory,
removed at the end, unless ``--out`` is given); the synthetic data and the tiny pretrained backbone
are the demo's own (``data/``, ``.cache/iclf/`` under the working directory: run from the repository
root), built once and reused. ``--quick`` shrinks everything to check that the script works (tiny
backbone without pretraining, 16 identities at 64x32, two steps per epoch; the overhead part on the
smoke block; a 3-configuration, 1-seed, 3-epoch space for ASHA vs FIFO): its figures mean nothing.

* ``projection`` (only with ``--part projection``): the demo's plan with ``--measure`` and no
  history (:func:`iclf.sweep.plan.make_plan`: a few timed steps and a slice of the evaluation of
  each configuration, one process alone), then the demo sweep itself; per configuration and in all,
  the projected device seconds of its trials against what they took (``device_seconds`` x
  ``device_share``, as the parent run's ``device_hours`` counts them), and the ratio.

``--disk DIR`` only reports :func:`disk_usage` of a sweep an earlier ``--out DIR`` kept (any
version of the code: it reads the files and the MLflow database, nothing else).

Usage: python bench/sweep_overhead.py [--part overhead|asha|both|projection] [--quick] [--smoke]
       [--epochs 8] [--grace-period 1] [--reduction-factor 2] [--num-cpus N] [--out DIR]
       [key=value ...]       (spec or experiment overrides applied to every sweep)
       python bench/sweep_overhead.py --disk DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "ablations" / "demo.yaml"
GOAL_OVERHEAD = 0.15
GOAL_SAVING = 0.40
GOAL_R1_GAP = 1.0

# --quick: the test suite's tiny set-up (no pretraining, 64x32 images, 16 ids, 2 steps per epoch).
QUICK = {"model.backbone": "tiny", "model.pretrained": None, "model.build_pretrained": False,
         "model.image_size": [64, 32], "data.synthetic": {"ids": 16, "images_per_id": 2, "seed": 0},
         "data.batch_size": 8, "data.num_workers": 0, "training.max_steps_per_epoch": 2,
         "schedule.warmup_epochs": 0, "evaluation.batch_size": 64}
QUICK_SPACE = {"lora.rank": {"grid": [0, 4, 16]}, "fusion.depth": {"grid": [2]}}


def load(spec_path: Path, overrides: dict, out: Path, smoke: bool = False):
    from iclf.sweep.spec import load_spec

    over = dict(overrides)
    over.update({"storage_path": str(out / "ray"), "tracking.uri": str(out / "mlflow.db")})
    return load_spec(spec_path, over, smoke=smoke)


def concurrency(spec, num_cpus: int) -> int:
    trials = spec.num_trials() or 1
    slots = max(1, math.floor(num_cpus / float(spec.resources.cpu)))
    if spec.max_concurrent_trials:
        slots = min(slots, spec.max_concurrent_trials)
    return min(slots, trials)


def sweep(spec, num_cpus: int):
    """Run one sweep (Ray's and the trials' chatter to stderr); returns (outcome, wall seconds)."""
    from iclf.sweep.tune import run_sweep

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        outcome = run_sweep(spec, num_cpus=num_cpus, verbose=0)
    wall = time.perf_counter() - t0
    if not outcome.completed:
        raise SystemExit(f"sweep {spec.sweep_name} did not complete")
    return outcome, wall


def children(outcome):
    from iclf.tracking.mlflow import child_runs, connect

    client = connect(outcome.tracking_uri)
    return client, child_runs(client, outcome.experiment_id, outcome.parent_run_id)


def disk_usage(sweep_out: Path) -> dict:
    """What a sweep under ``sweep_out`` (``--out``: ``ray/<sweep>/``, ``mlflow.db``,
    ``mlartifacts/``) left on disk: in all, and per FINISHED trial (its Ray trial directory, its
    run directory and its MLflow artifacts) against its selected weights (``best.pt``)."""
    from mlflow import MlflowClient

    from iclf.sweep.cleanup import trial_bytes

    sweep_out = Path(sweep_out)
    client = MlflowClient(f"sqlite:///{sweep_out / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, "tags.`iclf.role` = 'trial'")
    per_trial, ratios = [], []
    for run in runs:
        tags = run.data.tags
        run_dir = Path(tags.get("run_dir", ""))
        trial_dirs = list((sweep_out / "ray").glob(f"*/trial_{tags.get('ray_trial_id')}"))
        artifacts = Path(run.info.artifact_uri.replace("file://", ""))
        best = run_dir / "checkpoint" / "best.pt"
        total = trial_bytes([*trial_dirs, run_dir, artifacts])
        weights = best.stat().st_size if best.is_file() else 0
        per_trial.append({"config_key": tags.get("config_key"), "seed": tags.get("seed"),
                          "status": run.info.status, "bytes": total, "best_pt_bytes": weights,
                          "ratio": round(total / weights, 3) if weights else None})
        if weights and run.info.status == "FINISHED":
            ratios.append(total / weights)
    all_bytes = trial_bytes([sweep_out])
    return {"total_bytes": all_bytes, "total_mib": round(all_bytes / 2**20, 1),
            "trials": len(runs), "max_ratio_finished": round(max(ratios), 3) if ratios else None,
            "goal_max_ratio": 1.5, "per_trial": per_trial}


def overhead_part(args, overrides: dict, out: Path) -> dict:
    spec = load(DEMO, overrides, out / "overhead", smoke=args.smoke or args.quick)
    slots = concurrency(spec, args.num_cpus)
    outcome, wall = sweep(spec, args.num_cpus)
    _, runs = children(outcome)
    train_s = sum(r.data.metrics.get("device_seconds", 0.0) for r in runs)
    spans = sum((r.info.end_time - r.info.start_time) / 1000.0 for r in runs if r.info.end_time)
    t = outcome.timings
    per_slot = train_s / slots
    sweep_wall = wall - t.get("prepare_s", 0.0)
    fraction = 1.0 - per_slot / sweep_wall
    return {
        "spec": str(spec.path), "sweep": spec.sweep_name, "smoke": spec.smoke,
        "trials": outcome.trials, "finished": outcome.finished, "failed": outcome.failed,
        "epochs": spec.max_epochs, "concurrency": slots,
        "wall_s": round(wall, 2), "sweep_wall_s": round(sweep_wall, 2),
        "trial_train_s_sum": round(train_s, 2), "trial_train_s_per_slot": round(per_slot, 2),
        "trial_run_span_s_sum": round(spans, 2),
        "overhead_fraction": round(fraction, 4),
        "overhead_fraction_incl_prepare": round(1.0 - per_slot / wall, 4),
        "breakdown_s": {
            "prepare": round(t.get("prepare_s", 0.0), 2),
            "mlflow_setup": round(t.get("mlflow_setup_s", 0.0), 2),
            "ray_init": round(t.get("ray_init_s", 0.0), 2),
            "fit_outside_training": round(t.get("fit_s", 0.0) - per_slot, 2),
            "in_trial_outside_training": round((spans - train_s) / slots, 2),
            "test_eval": round(t.get("test_eval_s", 0.0), 2),
            "finalize": round(t.get("finalize_s", 0.0), 2),
        },
        "timings_s": {k: round(v, 2) for k, v in t.items()},
        "goal_max_fraction": GOAL_OVERHEAD, "goal_met": fraction <= GOAL_OVERHEAD,
        "disk": disk_usage(out / "overhead"),
    }


def projection_part(args, overrides: dict, out: Path) -> dict:
    from iclf.names import run_device_seconds
    from iclf.sweep.plan import make_plan

    spec = load(DEMO, overrides, out / "projection", smoke=args.smoke or args.quick)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        plan = make_plan(spec, history=False, measure=True,
                         say=lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True))
    measure_s = time.perf_counter() - t0
    projected: dict[str, float] = {}
    for t in plan.trials:
        et = plan.time_of(t.key)
        projected[t.key] = projected.get(t.key, 0.0) + et.trial_seconds(t.epochs)
    outcome, wall = sweep(spec, args.num_cpus)
    _, runs = children(outcome)
    actual: dict[str, float] = {}
    for r in runs:
        key = r.data.tags.get("config_key", "")
        actual[key] = actual.get(key, 0.0) + run_device_seconds(r.data.metrics, r.data.tags)
    configs = [{"config_key": k, "projected_s": round(v, 2), "actual_s": round(actual.get(k, 0), 2),
                "ratio": round(v / actual[k], 3) if actual.get(k) else None}
               for k, v in projected.items()]
    total_p, total_a = sum(projected.values()), sum(actual.values())
    return {"spec": str(spec.path), "sweep": spec.sweep_name, "smoke": spec.smoke,
            "trials": outcome.trials, "finished": outcome.finished,
            "measure_s": round(measure_s, 2),
            "sweep_wall_s": round(wall, 2), "projection": plan.projection().line(),
            "projected_device_hours": round(total_p / 3600, 4),
            "actual_device_hours": round(total_a / 3600, 4),
            "ratio": round(total_p / total_a, 3) if total_a else None, "configurations": configs}


def scheduler_run(args, overrides: dict, out: Path, name: str) -> dict:
    over = dict(overrides)
    over["training.epochs"] = args.epochs
    if name == "asha":
        over.update({"scheduler.name": "asha", "scheduler.grace_period": args.grace_period,
                     "scheduler.reduction_factor": args.reduction_factor})
    else:
        over["scheduler.name"] = "fifo"
    spec = load(DEMO, over, out / name)
    outcome, wall = sweep(spec, args.num_cpus)
    client, runs = children(outcome)
    epochs = 0
    best = (-math.inf, None)
    for r in runs:
        epochs += int(r.data.metrics.get("epoch", 0))
        values = [m.value for m in client.get_metric_history(r.info.run_id, "val/R1")
                  if math.isfinite(m.value)]
        if values and max(values) > best[0]:
            best = (max(values), f"{r.data.tags.get('config_key')} seed={r.data.tags.get('seed')}")
    return {"trials": outcome.trials, "finished": outcome.finished, "failed": outcome.failed,
            "stopped_early": sum(r.data.tags.get("stopped_early") == "true" for r in runs),
            "trial_epochs": epochs, "max_trial_epochs": len(runs) * args.epochs,
            "best_val_R1": round(best[0], 3) if best[1] else None, "best_trial": best[1],
            "wall_s": round(wall, 2), "space": {p.key: p.all_values() for p in spec.space},
            "seeds": list(spec.seeds)}


def asha_part(args, overrides: dict, out: Path) -> dict:
    fifo = scheduler_run(args, overrides, out, "fifo")
    asha = scheduler_run(args, overrides, out, "asha")
    saving = 1.0 - asha["trial_epochs"] / fifo["trial_epochs"] if fifo["trial_epochs"] else None
    gap = (fifo["best_val_R1"] - asha["best_val_R1"]
           if fifo["best_val_R1"] is not None and asha["best_val_R1"] is not None else None)
    return {"epochs": args.epochs, "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor, "fifo": fifo, "asha": asha,
            "epoch_saving": round(saving, 4) if saving is not None else None,
            "best_R1_gap": round(gap, 3) if gap is not None else None,
            "same_best_config": (fifo["best_trial"] or "").split(" seed=")[0]
            == (asha["best_trial"] or "").split(" seed=")[0],
            "goal_min_saving": GOAL_SAVING, "goal_max_R1_gap": GOAL_R1_GAP,
            "goal_met": saving is not None and gap is not None and saving >= GOAL_SAVING
            and gap <= GOAL_R1_GAP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("overhead", "asha", "both", "projection"),
                        default="both", help="both: overhead and asha; projection: on request")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script only")
    parser.add_argument("--smoke", action="store_true", help="overhead part on the smoke block")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per trial for ASHA vs FIFO (default 8; 3 with --quick)")
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=float, default=2.0)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1,
                        help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--out", default=None, help="keep the sweeps here (default: a temp dir)")
    parser.add_argument("--disk", default=None, metavar="DIR",
                        help="only report the disk use of a sweep kept by --out DIR/overhead")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="spec or experiment overrides for every sweep")
    args = parser.parse_args()
    if args.disk:
        print(json.dumps(disk_usage(Path(args.disk)), indent=2))
        return
    if args.epochs is None:
        args.epochs = 3 if args.quick else 8

    from iclf.config import parse_overrides

    overrides = dict(QUICK) if args.quick else {}
    if args.quick:
        overrides["data.root"] = None  # set below, under --out
    overrides.update(parse_overrides(args.overrides))

    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="iclf-sweep-"))
    if args.out and out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    if args.quick and overrides.get("data.root") is None:
        overrides["data.root"] = str(out / "data")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import torch

    t0 = time.perf_counter()
    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "cpus": os.cpu_count(), "torch": torch.__version__,
               "cuda": torch.cuda.is_available()}
    result: dict = {"machine": machine,
                    "quick": args.quick, "num_cpus": args.num_cpus,
                    "overrides": {k: v for k, v in overrides.items() if k not in QUICK}}
    try:
        if args.part in ("overhead", "both"):
            result["overhead"] = overhead_part(args, overrides, out)
        if args.part == "projection":
            result["projection"] = projection_part(args, overrides, out)
        if args.part in ("asha", "both"):
            asha_over = dict(overrides)
            if args.quick:
                asha_over.update({"space": QUICK_SPACE, "seeds": [0]})
            result["asha_vs_fifo"] = asha_part(args, asha_over, out)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    result["bench_wall_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
