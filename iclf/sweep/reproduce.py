"""Re-run one sweep trial outside Ray Tune and compare what it measures with what the sweep recorded.

The source is a trial's MLflow child run: its resolved ``configs.yaml`` artifact (the whole config,
seed included), the number of epochs it trained (ASHA may have stopped it early) and the number of
CPU threads it ran with (floating-point sums depend on it). The re-run calls the same
:func:`iclf.engine.train` as the trial did and logs to a new MLflow run nested under the source,
tagged ``iclf.role=reproduce`` and ``iclf.source_run``. On the CPU with deterministic kernels the
metrics are bit-identical, so the default tolerance there is 0; on a GPU it is configurable.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclf.names import (
    EPOCH, PARENT_TAG, ROLE_TAG, RUN_DIR_TAG, SEED_TAG, SOURCE_RUN_TAG, SUMMARY_METRICS, SWEEP_TAG,
    THREADS_TAG)

__all__ = ["COMPARED", "Comparison", "compare_metrics", "source_metrics", "reproduce_run",
           "GPU_TOLERANCE", "load_source_config"]

COMPARED = SUMMARY_METRICS
GPU_TOLERANCE = 0.5  # points; bf16 kernels on a GPU are not bit-reproducible across runs


@dataclass(frozen=True)
class Comparison:
    """Recorded (``source``) and re-measured (``reproduced``) metrics, in percent."""

    source: Mapping[str, float]
    reproduced: Mapping[str, float]
    tolerance: float

    @property
    def keys(self) -> list[str]:
        return [k for k in COMPARED if k in self.source and math.isfinite(self.source[k])]

    @property
    def differences(self) -> dict[str, float]:
        """``reproduced - source`` per metric; NaN where the re-run lacks a metric the source has."""
        return {k: float(self.reproduced.get(k, math.nan)) - float(self.source[k])
                for k in self.keys}

    @property
    def max_abs_difference(self) -> float:
        diffs = list(self.differences.values())
        if not diffs:
            return math.nan
        return math.inf if any(math.isnan(d) for d in diffs) else max(abs(d) for d in diffs)

    @property
    def ok(self) -> bool:
        return bool(self.keys) and self.max_abs_difference <= self.tolerance

    def table(self) -> str:
        lines = [f"{'metric':<10} {'recorded':>10} {'reproduced':>11} {'difference':>11}"]
        for k, d in self.differences.items():
            rep = self.reproduced.get(k, math.nan)
            lines.append(f"{k:<10} {self.source[k]:>10.4f} {rep:>11.4f} {d:>+11.4f}")
        return "\n".join(lines)


def compare_metrics(source: Mapping[str, float], reproduced: Mapping[str, float],
                    tolerance: float) -> Comparison:
    """Compare the metrics of :data:`COMPARED` that the source has; see :class:`Comparison`."""
    if tolerance < 0 or math.isnan(tolerance):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    return Comparison(dict(source), dict(reproduced), float(tolerance))


def source_metrics(client, run) -> dict[str, float]:
    """What a trial run recorded: validation metrics at its selected epoch, final test metrics."""
    metrics = run.data.metrics
    out: dict[str, float] = {}
    best_epoch = int(metrics.get("best_epoch", 0))
    for key in COMPARED:
        if key.startswith("val/"):
            if best_epoch:
                hist = {int(m.step): float(m.value)
                        for m in client.get_metric_history(run.info.run_id, key)}
                if best_epoch in hist:
                    out[key] = hist[best_epoch]
        elif key in metrics:
            out[key] = float(metrics[key])
    return out


def load_source_config(client, run):
    """The resolved experiment config a trial run trained with: its ``configs.yaml`` MLflow artifact,
    else the copy in the run directory its ``run_dir`` tag names (same machine)."""
    from iclf.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = Path(client.download_artifacts(run.info.run_id, "configs.yaml", tmp))
        except Exception:  # noqa: BLE001 - an artifact store without the file, or unreachable
            path = Path(run.data.tags.get(RUN_DIR_TAG, "")) / "configs.yaml"
            if not path.is_file():
                raise FileNotFoundError(
                    f"MLflow run {run.info.run_id} has no configs.yaml artifact and its run "
                    f"directory {path.parent} is not on this machine: nothing to reproduce "
                    f"from") from None
        return load_config(path)


def reproduce_run(client, run, *, output_dir: str | Path, tolerance: float | None = None,
                  device: str | None = None, progress: bool | None = None) -> tuple[Comparison, str]:
    """Re-train the trial of MLflow run ``run`` and compare; returns ``(comparison, new run id)``.

    ``tolerance`` defaults to 0 on the CPU and :data:`GPU_TOLERANCE` elsewhere. The new run is
    closed FINISHED (FAILED if training raised) and carries ``repro/max_abs_diff``.
    """
    import torch

    from iclf.engine import train
    from iclf.engine.trainer import resolve_device
    from iclf.tracking.mlflow import RunLogger, close_run
    from iclf.tracking.reporter import MlflowReporter

    source = source_metrics(client, run)
    src_id = run.info.run_id
    cfg = load_source_config(client, run)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg = dataclasses.replace(cfg, name=f"reproduce-{src_id[:8]}-{stamp}",
                              output_dir=str(Path(output_dir).resolve()))
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    dev = resolve_device(cfg.device)
    if tolerance is None:
        tolerance = 0.0 if dev.type == "cpu" else GPU_TOLERANCE
    trained = int(run.data.metrics.get(EPOCH, cfg.training.epochs))
    stop = trained if 0 < trained < cfg.training.epochs else None
    threads = run.data.tags.get(THREADS_TAG, "")

    new_id = client.create_run(
        run.info.experiment_id, run_name=f"reproduce {run.info.run_name or src_id[:8]}",
        tags={ROLE_TAG: "reproduce", SOURCE_RUN_TAG: src_id, PARENT_TAG: src_id,
              SWEEP_TAG: run.data.tags.get(SWEEP_TAG, ""), SEED_TAG: cfg.seed,
              "epochs_trained": trained}).info.run_id
    saved_threads = torch.get_num_threads()
    try:
        if threads.isdigit():
            torch.set_num_threads(int(threads))
        reporter = MlflowReporter(RunLogger(client, new_id))
        # stops where ASHA stopped the trial (if it did), testing the selected checkpoint as the
        # sweep did
        result = train(cfg, reporter=reporter, progress=progress, console=False, until_epoch=stop)
        reproduced = {**{f"val/{k}": v for k, v in result.val.items()},
                      **{f"test/{k}": v for k, v in result.test.items()}}
    except BaseException:
        close_run(client, new_id, "FAILED")
        raise
    finally:
        torch.set_num_threads(saved_threads)
    comparison = compare_metrics(source, reproduced, tolerance)
    diffs = {f"repro/diff/{k}": v for k, v in comparison.differences.items() if math.isfinite(v)}
    if math.isfinite(comparison.max_abs_difference):
        diffs["repro/max_abs_diff"] = comparison.max_abs_difference
    RunLogger(client, new_id).log_once(diffs, step=0)
    close_run(client, new_id, "FINISHED", {"repro/ok": str(comparison.ok).lower(),
                                            "repro/tolerance": tolerance})
    return comparison, new_id
