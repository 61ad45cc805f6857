"""The names every layer agrees on, and the small rules that go with them, each defined once.

A value travels from the engine (metric keys) through the sweep (Tune reports, MLflow metrics, tags
and params) to the analysis (DataFrame columns) under the names below. Pure Python: importing this
module imports nothing else.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, TypeVar

# ------------------------------------------------------------------------------------ metrics

#: Text-to-image retrieval metrics of one split, in percent (:mod:`iclf.metrics` computes them).
EVAL_METRICS: tuple[str, ...] = ("R1", "R5", "R10", "mAP", "mINP")
#: The three that summaries, curves, consoles and ``iclf reproduce`` show.
HEADLINE_METRICS: tuple[str, ...] = ("R1", "mAP", "mINP")
#: Validation metrics a sweep may optimise (the search never sees test).
VAL_METRICS: tuple[str, ...] = tuple(f"val/{m}" for m in EVAL_METRICS)
#: Per-epoch curves read back from a sweep.
CURVE_METRICS: tuple[str, ...] = tuple(f"val/{m}" for m in HEADLINE_METRICS)
#: What a sweep summary and a reproduction compare: validation at the selected epoch, then test.
SUMMARY_METRICS: tuple[str, ...] = CURVE_METRICS + tuple(f"test/{m}" for m in HEADLINE_METRICS)

#: Logged at step ``epoch`` once an epoch is complete; Tune's time attribute (ASHA rungs).
EPOCH = "epoch"
#: What Tune optimises: the best value so far of the spec's metric.
OBJECTIVE = "objective"

# ------------------------------------------------------------------------------------ MLflow

ROLE_TAG = "iclf.role"            # "sweep" (parent), "trial" (child) or "reproduce"
SWEEP_TAG = "iclf.sweep"          # the sweep name, on parent and children
SOURCE_RUN_TAG = "iclf.source_run"  # on a reproduction: the trial run it re-ran
TRIAL_TAG = "ray_trial_id"        # a child run's Ray trial id (find-or-create key)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
CONFIG_KEY_TAG = "config_key"     # "lora.rank=8,fusion.depth=2": the configuration without seed
SEED_TAG = "seed"
RUN_DIR_TAG = "run_dir"           # the trial's run directory (checkpoints, configs.yaml)
THREADS_TAG = "torch_threads"     # CPU threads the trial ran with (reproduce uses the same)
METRIC_TAG = "metric"             # parent run: the spec's metric and mode
MODE_TAG = "mode"
STORAGE_TAG = "storage"           # parent run: the sweep's Ray directory
STATE_TAG = "iclf.state"          # parent run: running | interrupted | finished
INTERRUPTED_TAG = "interrupted"   # child run: "true" while its trial was cut by an interrupt
DEVICE_SHARE_TAG = "device_share"  # child run: the share of its GPU a trial held (resources.gpu)

#: MLflow params and DataFrame columns of the swept parameters: ``param.lora.rank``.
PARAM_PREFIX = "param."

# ------------------------------------------------------------------------------------ files

#: In ``<storage>/<sweep>/``: the sweep's tracking URI, experiment and parent run id.
STATE_FILE = "sweep.json"
#: The tracking database when a spec names none, relative to the working directory.
DEFAULT_DB = "runs/mlflow.db"

# ------------------------------------------------------------------------------------ rules

Mode = str  # "max" or "min"
T = TypeVar("T")


def is_test_metric(key: str) -> bool:
    """``test/...`` and ``test_last/...``: metrics the search and the per-epoch logs never carry."""
    return key.startswith("test")


def without_test(metrics: Mapping[str, T]) -> dict[str, T]:
    """``metrics`` minus the test ones (what may reach Tune or a per-epoch log)."""
    return {k: v for k, v in metrics.items() if not is_test_metric(k)}


def device_share(value: object) -> float:
    """The share of its device a run held, from its ``device_share`` tag (or a DataFrame cell): a
    trial at ``resources.gpu: 0.5`` shares its GPU with another, so it costs half its time. No tag
    (``iclf train``, a CPU trial, an older sweep) or an unreadable one: the whole device."""
    try:
        share = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1.0
    return share if 0.0 < share <= 1.0 else 1.0


def run_device_seconds(metrics: Mapping[str, float], tags: Mapping[str, str]) -> float:
    """What a run cost, in device-seconds: its ``device_seconds`` metric x its :func:`device_share`
    (the figure a sweep's ``device_hours`` sums)."""
    return float(metrics.get("device_seconds", 0.0)) * device_share(tags.get(DEVICE_SHARE_TAG))


def better(new: float, old: float | None, mode: Mode) -> bool:
    """Whether ``new`` beats ``old`` (None: nothing yet) under ``mode`` (max or min)."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    if old is None:
        return True
    return new > old if mode == "max" else new < old


def best_so_far(values: Iterable[float], mode: Mode) -> float | None:
    """The best finite value under ``mode``, or None when there is none."""
    best = None
    for v in values:
        if math.isfinite(v) and better(v, best, mode):
            best = v
    return best


def worst(mode: Mode) -> float:
    """The value that anything beats: what Tune is told before the first evaluation."""
    return -math.inf if mode == "max" else math.inf


# ------------------------------------------------------------------------------- the method

#: Losses that run the cross-modal fusion module (MLM and ITM share it; method.md, decisions).
FUSION_LOSSES: tuple[str, ...] = ("mlm", "itm")


def fusion_problem(losses: Iterable[str], fusion_depth: int) -> str | None:
    """The rule "MLM and ITM need the fusion module", in one place: with ``losses`` enabled and a
    fusion module of ``fusion_depth`` layers (0 = none), the problem in words, or None if there is
    none. The config, the model builder and the objective all refuse through it."""
    enabled = set(losses)
    needing = [n for n in FUSION_LOSSES if n in enabled]
    if not needing or fusion_depth >= 1:
        return None
    names = " and ".join(n.upper() for n in needing)
    verb = "loss needs" if len(needing) == 1 else "losses need"
    off = " and ".join(f"losses.weights.{n}=0" for n in needing)
    return (f"the {names} {verb} the fusion module, but fusion depth is {fusion_depth}; "
            f"set {off} or fusion.depth>=1")
