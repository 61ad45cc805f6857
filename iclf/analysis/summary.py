"""Per-configuration summary of a finished sweep: statistics over seeds and the baseline comparison.

Each configuration was trained with several seeds; the summary reports, per metric, the mean, the
standard deviation (ddof=1), the Student-t 95% CI half-width and the count, then compares every
configuration with the sweep's baseline: difference of means and a two-sided t-test over seeds
(paired by seed when both configurations ran the same seeds, Welch otherwise). Gains of about one
point are within seed variance (method.md, "Reproducibility gaps and seed variance"), which is why
the p-value sits next to every delta. See :mod:`iclf.analysis` for the input layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from iclf.analysis.stats import mean_std_ci, paired_t_test, welch_t_test
from iclf.names import DEVICE_SHARE_TAG, PARAM_PREFIX, SUMMARY_METRICS, device_share

__all__ = [
    "DEFAULT_METRICS",
    "PARAM_PREFIX",
    "SweepSummary",
    "best",
    "device_hours",
    "finished_trials",
    "param_columns",
    "resolve_baseline",
    "summarize",
    "summarize_sweep",
]

DEFAULT_METRICS: tuple[str, ...] = SUMMARY_METRICS
FINISHED = "FINISHED"
_REQUIRED = ("run_id", "config_key", "seed", "status")

Baseline = Mapping[str, Any] | str | None


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The ``param.<dotted.name>`` columns of a trials or summary frame, in frame order."""
    return [c for c in frame.columns if str(c).startswith(PARAM_PREFIX)]


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} frame lacks column(s) {missing}; it has {list(frame.columns)} "
            "(see iclf.analysis for the expected layout)"
        )


def finished_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows with ``status == "FINISHED"``, after checking the required columns and seeds."""
    _require_columns(trials, _REQUIRED, "trials")
    done = trials[trials["status"].astype(str).str.upper() == FINISHED]
    bad = done[pd.isna(done["seed"])]
    if len(bad):
        raise ValueError(f"trials: run(s) {list(bad['run_id'])} are FINISHED but have no seed")
    return done


def device_hours(trials: pd.DataFrame) -> float:
    """The device-hours of ``trials``' runs, any status: each run's ``device_seconds`` times the
    share of its device it held (column ``device_share``: a trial packed at ``resources.gpu: 0.5``
    costs half its time; missing or NaN: the whole device)."""
    seconds = trials["device_seconds"].to_numpy(float)
    if DEVICE_SHARE_TAG in trials.columns:
        seconds = seconds * np.array([device_share(v) for v in trials[DEVICE_SHARE_TAG]], float)
    return float(np.nansum(seconds)) / 3600


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _same_value(a: Any, b: Any) -> bool:
    """Parameter equality tolerant to the str/int/float round trip of MLflow params."""
    if _is_null(a) or _is_null(b):
        return _is_null(a) and _is_null(b)
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _natural_key(value: Any) -> tuple:
    """Sort key: numbers numerically, then strings, then missing values."""
    if _is_null(value):
        return (2, 0.0, "")
    if not isinstance(value, bool):
        try:
            return (0, float(value), "")
        except (TypeError, ValueError):
            pass
    return (1, 0.0, str(value))


def resolve_baseline(trials: pd.DataFrame, baseline: Mapping[str, Any] | str) -> str:
    """The ``config_key`` of the baseline among ``trials`` (pass the FINISHED rows).

    The baseline is given as a config_key or as a dict of parameter values.

    Dict keys may be written with or without the ``param.`` prefix; the dict has to single out
    exactly one configuration among the trials.
    """
    keys = list(dict.fromkeys(trials["config_key"].astype(str)))
    if isinstance(baseline, str):
        if baseline not in keys:
            raise ValueError(
                f"baseline config_key {baseline!r} has no FINISHED trials; finished: {keys}"
            )
        return baseline
    if not isinstance(baseline, Mapping) or not baseline:
        raise TypeError(f"baseline must be a config_key or a non-empty dict, got {baseline!r}")
    cols = param_columns(trials)
    wanted: dict[str, Any] = {}
    for name, value in baseline.items():
        col = name if str(name).startswith(PARAM_PREFIX) else PARAM_PREFIX + str(name)
        if col not in cols:
            raise ValueError(
                f"baseline parameter {name!r} is not an ablated parameter; have {cols}"
            )
        wanted[col] = value
    mask = np.ones(len(trials), dtype=bool)
    for col, value in wanted.items():
        mask &= np.array([_same_value(v, value) for v in trials[col]], dtype=bool)
    found = list(dict.fromkeys(trials.loc[mask, "config_key"].astype(str)))
    if len(found) != 1:
        raise ValueError(
            f"baseline {dict(baseline)} matches {len(found)} configurations {found}; "
            f"it must match exactly one finished configuration of {keys}"
        )
    return found[0]


def _config_params(rows: pd.DataFrame, cols: Sequence[str], key: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for col in cols:
        values = list(rows[col])
        first = values[0]
        if not all(_same_value(first, v) for v in values[1:]):
            raise ValueError(
                f"trials: config_key {key!r} has differing values {sorted(set(map(str, values)))} "
                f"for {col}; a config_key must name a single configuration"
            )
        params[col] = first
    return params


def _check_unique_seeds(rows: pd.DataFrame, key: str) -> None:
    dup = rows[rows["seed"].duplicated(keep=False)]
    if len(dup):
        raise ValueError(
            f"trials: config_key {key!r} has several FINISHED runs for seed(s) "
            f"{sorted(set(dup['seed'].astype(int)))}: run_ids {list(dup['run_id'])}"
        )


def _compare(
    rows: pd.DataFrame, base: pd.DataFrame, metrics: Sequence[str], alpha: float
) -> dict[str, Any]:
    """Delta of means and t-test p-value of ``rows`` against ``base`` for each metric."""
    seeds, base_seeds = set(rows["seed"].astype(int)), set(base["seed"].astype(int))
    paired = seeds == base_seeds and len(seeds) >= 2
    out: dict[str, Any] = {"test": "paired" if paired else "welch"}
    a = rows.set_index(rows["seed"].astype(int)).sort_index()
    b = base.set_index(base["seed"].astype(int)).sort_index()
    for m in metrics:
        delta = math.nan
        if _any_finite(a[m], b[m]):
            delta = float(np.nanmean(a[m])) - float(np.nanmean(b[m]))
        test = paired_t_test(a[m], b.loc[a.index, m]) if paired else welch_t_test(a[m], b[m])
        out[f"delta {m}"] = delta
        out[f"p {m}"] = test.p
        out[f"sig {m}"] = bool(test.p < alpha) if not math.isnan(test.p) else False
    return out


def _any_finite(a: pd.Series, b: pd.Series) -> bool:
    return bool(np.isfinite(a.to_numpy(float)).any() and np.isfinite(b.to_numpy(float)).any())


def summarize(
    trials: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    baseline: Baseline = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per configuration: statistics over seeds and, with a baseline, the comparison.

    Columns: ``config_key``, the ``param.*`` columns, ``n`` (FINISHED seeds), ``n_failed`` (other
    statuses), ``seeds``; per metric ``<m> mean``, ``<m> std`` (ddof=1), ``<m> ci95`` (Student-t
    half-width, NaN for one seed) and ``<m> n`` (seeds that logged it); ``trainable_params`` when
    given; ``device_hours`` (all runs of the configuration, failed ones included, as they cost
    device time). With a baseline: ``is_baseline``, ``test`` ("paired" when both ran the same seeds,
    else "welch") and per metric ``delta <m>`` (config mean minus baseline mean), ``p <m>`` and
    ``sig <m>`` (p < alpha). Only FINISHED rows enter the statistics; rows are sorted by parameter
    values. ``metrics=None`` takes those of :data:`DEFAULT_METRICS` the frame has.
    """
    done = finished_trials(trials)
    _require_columns(trials, ["device_seconds"], "trials")
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in trials.columns]
        if not metrics:
            raise ValueError(f"trials frame has none of the metrics {list(DEFAULT_METRICS)}")
    metrics = list(metrics)
    _require_columns(trials, metrics, "trials")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if done.empty:
        raise ValueError(f"trials: none of the {len(trials)} runs has status FINISHED")
    cols = param_columns(trials)
    keys = trials["config_key"].astype(str)
    base_key = resolve_baseline(done, baseline) if baseline is not None else None
    base_rows = done[done["config_key"].astype(str) == base_key] if base_key else None

    records = []
    for key, rows in done.groupby(done["config_key"].astype(str), sort=False):
        _check_unique_seeds(rows, key)
        record: dict[str, Any] = {"config_key": key, **_config_params(rows, cols, key)}
        everything = trials[keys == key]
        record["n"] = len(rows)
        record["n_failed"] = len(everything) - len(rows)
        record["seeds"] = ",".join(str(s) for s in sorted(rows["seed"].astype(int)))
        for m in metrics:
            est = mean_std_ci(rows[m].to_numpy(float))
            record.update(
                {f"{m} mean": est.mean, f"{m} std": est.std, f"{m} ci95": est.ci, f"{m} n": est.n}
            )
        if "trainable_params" in rows.columns:
            counts = rows["trainable_params"].dropna()
            record["trainable_params"] = int(counts.iloc[0]) if len(counts) else math.nan
        record["device_hours"] = device_hours(everything)
        if base_key is not None:
            record["is_baseline"] = key == base_key
            if key == base_key:
                record["test"] = ""
                for m in metrics:
                    record.update({f"delta {m}": 0.0, f"p {m}": math.nan, f"sig {m}": False})
            else:
                record.update(_compare(rows, base_rows, metrics, alpha))
        records.append(record)

    records.sort(key=lambda r: tuple(_natural_key(r[c]) for c in cols) + (r["config_key"],))
    return pd.DataFrame.from_records(records).reset_index(drop=True)


@dataclass(frozen=True)
class SweepSummary:
    """A sweep's summary table with the facts that go around it."""

    table: pd.DataFrame  # the output of summarize()
    total_device_hours: float  # every run of the sweep, any status
    baseline_key: str | None
    primary: str  # the metric that ranks configurations, e.g. "val/R1"
    metrics: tuple[str, ...]
    params: tuple[str, ...]  # the ablated parameters' column names, "param.<name>"
    n_trials: int
    n_finished: int
    alpha: float = 0.05
    mode: str = "max"  # how `primary` ranks: the spec's mode


def best(summary: SweepSummary, mode: str) -> str | None:
    """The configuration whose mean of the primary metric is best under ``mode`` (max or min); the
    first in table order on a tie; None when no configuration has the metric. The one rule by which
    the sweep, ``iclf summary``, ``iclf best`` and ``iclf reproduce`` name a winner."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    col = f"{summary.primary} mean"
    values = summary.table[col]
    if values.isna().all():
        return None
    index = values.idxmax() if mode == "max" else values.idxmin()
    return str(summary.table.loc[index, "config_key"])


def summarize_sweep(
    trials: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    baseline: Baseline = None,
    primary: str = "val/R1",
    alpha: float = 0.05,
    mode: str = "max",
) -> SweepSummary:
    """:func:`summarize` plus the sweep totals, bundled as a :class:`SweepSummary`; ``mode`` is how
    ``primary`` ranks configurations (see :func:`best`)."""
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in trials.columns]
    if primary not in metrics:
        raise ValueError(f"primary metric {primary!r} is not among the metrics {list(metrics)}")
    table = summarize(trials, metrics=metrics, baseline=baseline, alpha=alpha)
    base_key = None
    if baseline is not None:
        base_key = str(table.loc[table["is_baseline"], "config_key"].iloc[0])
    return SweepSummary(
        table=table,
        total_device_hours=device_hours(trials),
        baseline_key=base_key,
        primary=primary,
        metrics=tuple(metrics),
        params=tuple(param_columns(trials)),
        n_trials=len(trials),
        n_finished=len(finished_trials(trials)),
        alpha=alpha,
        mode=mode,
    )
