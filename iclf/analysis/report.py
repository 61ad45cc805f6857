"""Every artifact of a finished sweep's analysis in one call (used by the sweep driver and
``iclf summary``): tables, importance and figures under one directory."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from iclf.analysis import plots
from iclf.analysis.importance import param_importances
from iclf.analysis.retrieval import write_retrieval_comparison
from iclf.analysis.summary import PARAM_PREFIX, best, finished_trials, summarize_sweep
from iclf.analysis.tables import write_tables

__all__ = ["write_report"]


def write_report(
    trials: pd.DataFrame,
    curves: pd.DataFrame | None,
    out_dir: str | Path,
    baseline: Mapping[str, Any] | str | None = None,
    metric: str = "val/R1",
    params: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    evaluator: str = "ped_anova",
    seed: int | None = 0,
    mode: str = "max",
    retrieval: Callable[[str], Mapping[str, Any] | None] | None = None,
) -> dict[str, Path]:
    """Write the sweep report under ``out_dir`` and return ``{artifact: path}``.

    Keys: ``summary_csv``, ``summary_md``, ``summary_tex``, ``summary_txt`` (console table),
    ``importance_csv``, ``importance_png``, ``metric_vs_params_png``, ``cost_benefit_png``
    (when trainable parameter counts are known), ``curves_png`` (when ``curves`` has points of
    FINISHED runs) and ``report_json`` (totals, baseline, best configuration, skipped artifacts).
    ``metric`` is the primary validation metric that ranks configurations, is compared with the
    baseline and scores importance; ``mode`` (the spec's) says whether its best is the max or the min;
    ``params`` restricts importance and figures to some of the
    ablated parameters (dotted names, default all ``param.*`` columns). ``retrieval(run_id)``
    returns a trial's retrieval record (:mod:`iclf.engine.retrieval`) or None: with it,
    ``retrieval_png`` shows the same validation queries for the baseline and the best configuration
    side by side (:mod:`iclf.analysis.retrieval`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_sweep(trials, metrics=metrics, baseline=baseline, primary=metric, mode=mode)
    paths: dict[str, Path] = {f"summary_{k}": p for k, p in write_tables(summary, out).items()}
    skipped: dict[str, str] = {}

    importance = param_importances(
        trials, metric=metric, params=params, evaluator=evaluator, seed=seed
    )
    paths["importance_csv"] = out / "importance.csv"
    importance.to_csv(paths["importance_csv"], index=False)
    paths["importance_png"] = plots.plot_importance(importance, out / "importance.png", metric)

    paths["metric_vs_params_png"] = plots.plot_metric_vs_params(
        summary, out / "metric_vs_params.png", metric=metric, params=params
    )
    table = summary.table
    if "trainable_params" in table and (pd.to_numeric(table["trainable_params"]) > 0).any():
        cost = out / "cost_benefit.png"
        paths["cost_benefit_png"] = plots.plot_cost_benefit(summary, cost, metric)
    else:
        skipped["cost_benefit_png"] = "no trainable_params counts"

    finished_ids = set(finished_trials(trials)["run_id"])
    points = None if curves is None else curves[curves["run_id"].isin(finished_ids)]
    if points is not None and metric in points and points[metric].notna().any():
        paths["curves_png"] = plots.plot_curves(points, out / "curves.png", metric=metric)
    else:
        skipped["curves_png"] = f"no per-epoch {metric} points of FINISHED runs"

    best_key = best(summary, summary.mode)
    pictured: dict[str, Any] = {}
    if retrieval is not None:
        picture, pictured = write_retrieval_comparison(
            trials, summary.baseline_key, best_key, retrieval, out / "retrieval.png")
        if picture is not None:
            paths["retrieval_png"] = picture
        else:
            skipped["retrieval_png"] = pictured.get("skipped", "")

    facts = {
        "primary": metric,
        "metrics": list(summary.metrics),
        "params": [p[len(PARAM_PREFIX) :] for p in summary.params],
        "baseline_key": summary.baseline_key,
        "best_key": best_key,
        "retrieval": pictured,
        "mode": summary.mode,
        "total_device_hours": summary.total_device_hours,
        "n_trials": summary.n_trials,
        "n_finished": summary.n_finished,
        "n_configurations": len(table),
        "importance": {
            p: (None if math.isnan(v) else v)
            for p, v in zip(importance["param"], importance["importance"])
        },
        "importance_note": importance.attrs.get("note", ""),
        "skipped": skipped,
    }
    paths["report_json"] = out / "report.json"
    paths["report_json"].write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    return paths
