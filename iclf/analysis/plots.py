"""Figures of a finished sweep; each function writes one PNG (dpi 120) and returns its path.

A grid ablation is drawn along its grid; a searched sweep (TPE, random draws: a new value of every
parameter per trial, one seed each) has no grid to draw lines along and keys too long for a legend,
so each parameter becomes a scatter on its own scale, the curves show the best configurations and
the cost/benefit chart names the Pareto front.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so
nothing here touches the process-wide backend or leaks open figures. Error bars are the Student-t
95% CI over seeds from :func:`iclf.analysis.summarize` (or the standard deviation on request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from iclf.analysis.summary import PARAM_PREFIX, SweepSummary, _is_null, _natural_key, param_columns

__all__ = ["DPI", "curve_configs", "plot_cost_benefit", "plot_curves", "plot_importance",
           "plot_metric_vs_params"]

DPI = 120
_ERRORS = {"ci95": "95% CI", "std": "std"}
MAX_LINES = 8      # more lines (or x positions) than this in a subplot: a scatter instead
MAX_LEVELS = 12
MAX_CURVES = 10    # curves of the best configurations only
MAX_NAMED = 12     # cost/benefit: more configurations than this, only the Pareto front is named
LABEL_CHARS = 60   # legend entries and point labels are cut here


def _table(summary: pd.DataFrame | SweepSummary) -> pd.DataFrame:
    return summary.table if isinstance(summary, SweepSummary) else summary


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _columns(table: pd.DataFrame, metric: str, error: str) -> tuple[str, str]:
    if error not in _ERRORS:
        raise ValueError(f"error must be one of {list(_ERRORS)}, got {error!r}")
    mean, err = f"{metric} mean", f"{metric} {error}"
    missing = [c for c in (mean, err) if c not in table.columns]
    if missing:
        raise ValueError(
            f"summary table lacks {missing}: was {metric!r} among the summarized metrics?"
        )
    return mean, err


def _label(value: Any) -> str:
    if _is_null(value):
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(text: Any, limit: int = LABEL_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _numeric(values: pd.Series) -> bool:
    """Whether the set values of a parameter column are all numbers (bools are not)."""
    set_values = [v for v in values if not _is_null(v)]
    return bool(set_values) and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        for v in set_values
    )


def _log_scale(x: np.ndarray) -> bool:
    """Whether values look drawn on a log scale (a learning rate, Adam's eps, ranks 4..64): all
    positive, spanning a decade or more, and crowded at the low end (median under a quarter of the
    maximum; a uniform draw such as a loss weight in [0, 2] has its median near half of it)."""
    if len(x) < 2 or x.min() <= 0:
        return False
    return x.max() / x.min() >= 10 and float(np.median(x)) < 0.25 * x.max()


def _scatter(ax: Any, table: pd.DataFrame, col: str, mean: str, err: str) -> None:
    """One point per configuration against the value of ``col``: on a numeric axis for numbers (log
    for values drawn on a log scale: :func:`_log_scale`), at even positions for anything else."""
    values = table[col]
    if _numeric(values):
        keep = ~values.map(_is_null)
        x = values[keep].to_numpy(float)
        ax.errorbar(x, table.loc[keep, mean], yerr=_yerr(table.loc[keep, err]), fmt="o", capsize=2,
                    alpha=0.8)
        if _log_scale(x):
            ax.set_xscale("log")
        unset = int((~keep).sum())
        if unset:
            ax.set_title(f"{ax.get_title()} ({unset} without it)", fontsize=10)
        return
    labels = values.map(_label)
    levels = sorted(set(labels), key=lambda v: _natural_key(_level(v)))
    x = labels.map({lv: i for i, lv in enumerate(levels)}).to_numpy(float)
    # points of one level spread across its position (golden-ratio steps: in no order that could
    # read as a trend), not on top of each other
    nth = labels.groupby(labels).cumcount().to_numpy(float)
    x = x + 0.3 * (np.mod((nth + 1) * 0.618034, 1.0) - 0.5)
    ax.errorbar(x, table[mean], yerr=_yerr(table[err]), fmt="o", capsize=2, alpha=0.8)
    ax.set_xticks(range(len(levels)), [_short(v, 16) for v in levels])


def _yerr(values: pd.Series) -> np.ndarray:
    return np.nan_to_num(values.to_numpy(float), nan=0.0)  # one seed: no bar, not a zero-width lie


def _baseline_line(ax: Any, table: pd.DataFrame, mean: str) -> None:
    if "is_baseline" in table.columns and table["is_baseline"].any():
        y = float(table.loc[table["is_baseline"], mean].iloc[0])
        ax.axhline(y, color="0.4", linestyle=":", linewidth=1, label="baseline")


def plot_metric_vs_params(
    summary: pd.DataFrame | SweepSummary,
    path: str | Path,
    metric: str = "val/R1",
    params: Sequence[str] | None = None,
    error: str = "ci95",
) -> Path:
    """``metric`` against each ablated parameter, one subplot per parameter, with error bars.

    In the subplot of one parameter, configurations are grouped into lines by the values of the
    other parameters (with two parameters: one line per value of the other). Parameter values sit
    at evenly spaced positions in natural order, as ablation grids are. Where that would draw more
    than :data:`MAX_LINES` lines or :data:`MAX_LEVELS` positions (a searched sweep), the subplot is
    a scatter of every configuration against the parameter's value instead (:func:`_scatter`).
    """
    table = _table(summary)
    mean, err = _columns(table, metric, error)
    cols = (
        param_columns(table)
        if params is None
        else [p if p.startswith(PARAM_PREFIX) else PARAM_PREFIX + p for p in params]
    )
    missing = [c for c in cols if c not in table.columns]
    if missing or not cols:
        raise ValueError(f"summary table has no parameter column(s) {missing or cols}")
    ncols = min(3, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    fig = _figure(5.2 * ncols, 4.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(cols) :]:
        ax.set_visible(False)
    for ax, col in zip(axes, cols):
        name = col[len(PARAM_PREFIX) :]
        levels = sorted(set(map(_label, table[col])), key=lambda s: _natural_key(_level(s)))
        position = {lv: i for i, lv in enumerate(levels)}
        others = [c for c in cols if c != col]
        groups = (
            [((), table)]
            if not others
            else sorted(
                table.groupby([table[o].map(_label) for o in others], sort=False),
                key=lambda kv: tuple(_natural_key(_level(v)) for v in _tuple(kv[0])),
            )
        )
        ax.set_title(f"{metric} vs {name}")
        ax.set_xlabel(name)
        ax.set_ylabel(f"{metric} (mean ± {_ERRORS[error]})")
        ax.grid(True, alpha=0.3)
        if len(groups) > MAX_LINES or len(levels) > MAX_LEVELS:
            _scatter(ax, table, col, mean, err)
            _baseline_line(ax, table, mean)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            continue
        width = 0.25 / max(1, len(groups) - 1) if len(groups) > 1 else 0.0
        for i, (values, rows) in enumerate(groups):
            rows = rows.assign(_x=rows[col].map(_label).map(position)).sort_values("_x")
            x = rows["_x"].to_numpy(float) + (i - (len(groups) - 1) / 2) * width
            pairs = zip(others, _tuple(values))
            label = ", ".join(f"{o[len(PARAM_PREFIX) :]}={v}" for o, v in pairs)
            ax.errorbar(
                x, rows[mean], yerr=_yerr(rows[err]), marker="o", capsize=3,
                label=_short(label) if label else metric,
            )
        _baseline_line(ax, table, mean)
        ax.set_xticks(range(len(levels)), levels)
        ax.legend(
            fontsize=8,
            title=_short(", ".join(o[len(PARAM_PREFIX) :] for o in others)) or None,
            title_fontsize=8,
        )
    fig.suptitle(f"{metric} over the ablated parameters (error bars: {_ERRORS[error]} over seeds)")
    return _save(fig, path)


def _tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _level(label: str) -> Any:
    return None if label == "none" else label


def _pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats with fewer or equal parameters."""
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def plot_cost_benefit(
    summary: pd.DataFrame | SweepSummary,
    path: str | Path,
    metric: str = "val/R1",
    error: str = "ci95",
) -> Path:
    """Trainable parameters (log x) against ``metric`` with error bars and the Pareto front.

    The cost/benefit of the LoRA rank: full fine-tuning sits far right, small ranks far left.
    """
    table = _table(summary)
    mean, err = _columns(table, metric, error)
    if "trainable_params" not in table.columns:
        raise ValueError("summary table has no trainable_params column")
    rows = table[pd.to_numeric(table["trainable_params"], errors="coerce") > 0]
    rows = rows[np.isfinite(rows[mean].to_numpy(float))]
    if rows.empty:
        raise ValueError(f"no configuration has both trainable_params > 0 and a {metric} mean")
    x = rows["trainable_params"].to_numpy(float)
    y = rows[mean].to_numpy(float)
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    ax.errorbar(x, y, yerr=_yerr(rows[err]), fmt="o", capsize=3, label="configuration")
    front = _pareto(x, y)
    ax.plot(x[front], y[front], linestyle="--", color="C3", label="Pareto front")
    # Points of equal cost (e.g. fusion depths at one LoRA rank): stack their labels downwards.
    order = np.argsort(y, kind="stable")
    rank_in_group = np.zeros(len(x), dtype=int)  # 0 for the highest point of its cost
    for xi in np.unique(x):
        idx = order[x[order] == xi]  # ascending y among points of this cost
        rank_in_group[idx] = np.arange(len(idx))[::-1]
    named = np.zeros(len(x), dtype=bool)
    named[front if len(x) > MAX_NAMED else slice(None)] = True
    for xi, yi, key, k, show in zip(x, y, rows["config_key"], rank_in_group, named):
        if show:
            ax.annotate(_short(key, 48), (xi, yi), textcoords="offset points",
                        xytext=(5, 3 - 9 * int(k)), fontsize=7)
    if "is_baseline" in rows.columns and rows["is_baseline"].any():
        b = rows["is_baseline"].to_numpy(bool)
        ax.plot(
            x[b], y[b], marker="*", markersize=14, linestyle="none", color="C2", label="baseline"
        )
    ax.set_xscale("log")
    ax.margins(x=0.2)  # room for the labels of the cheapest and the dearest configurations
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{metric} (mean ± {_ERRORS[error]})")
    ax.set_title(f"Cost/benefit: trainable parameters vs {metric}"
                 + (" (the Pareto front named)" if len(x) > MAX_NAMED else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(
    curves: pd.DataFrame,
    path: str | Path,
    metric: str = "val/R1",
    configs: Sequence[str] | None = None,
) -> Path:
    """Per-epoch validation ``metric`` per configuration: mean over seeds, shaded ± std band. Without
    ``configs``, the :data:`MAX_CURVES` best configurations (:func:`curve_configs`)."""
    needed = ["run_id", "config_key", "epoch", metric]
    missing = [c for c in needed if c not in curves.columns]
    if missing:
        raise ValueError(f"curves frame lacks column(s) {missing}; has {list(curves.columns)}")
    frame = curves[np.isfinite(curves[metric].to_numpy(float))]
    if configs is not None:
        unknown = sorted(set(configs) - set(frame["config_key"]))
        if unknown:
            raise ValueError(f"configs {unknown} have no curve points")
        frame = frame[frame["config_key"].isin(configs)]
        keys = list(configs)
    else:
        keys = curve_configs(frame, metric)
    if not keys:
        raise ValueError(f"curves frame has no finite {metric} values to plot")
    total = frame["config_key"].nunique()
    fig = _figure(8.5, 5.0)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)] if len(keys) <= 10 else _tab20(len(keys))
    for key, color in zip(keys, colors):
        stats = frame[frame["config_key"] == key].groupby("epoch")[metric].agg(["mean", "std"])
        epochs, mu = stats.index.to_numpy(float), stats["mean"].to_numpy(float)
        sd = np.nan_to_num(stats["std"].to_numpy(float), nan=0.0)
        ax.plot(epochs, mu, marker="o", markersize=3, color=color, label=_short(key))
        ax.fill_between(epochs, mu - sd, mu + sd, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"Validation {metric} per epoch (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    which = f" (the {len(keys)} best of {total})" if len(keys) < total else ""
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
              title=f"configuration{which}", title_fontsize=8)
    return _save(fig, path)


def curve_configs(curves: pd.DataFrame, metric: str, limit: int = MAX_CURVES) -> list[str]:
    """The configurations whose curves :func:`plot_curves` draws: all, in order of appearance, up
    to ``limit``; beyond it the ``limit`` best by their best epoch (mean over seeds), best first."""
    frame = curves[np.isfinite(curves[metric].to_numpy(float))]
    keys = list(dict.fromkeys(frame["config_key"]))
    if len(keys) <= limit:
        return keys
    peak = frame.groupby(["config_key", "epoch"])[metric].mean().groupby(level=0).max()
    return list(peak.sort_values(ascending=False, kind="stable").index[:limit])


def _tab20(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def plot_importance(importance: pd.DataFrame, path: str | Path, metric: str = "val/R1") -> Path:
    """Horizontal bar chart of :func:`iclf.analysis.param_importances`, most important on top."""
    missing = [c for c in ("param", "importance") if c not in importance.columns]
    if missing:
        raise ValueError(f"importance table lacks column(s) {missing}")
    table = importance.sort_values("importance", ascending=True, na_position="first")
    values = table["importance"].to_numpy(float)
    fig = _figure(6.5, 1.2 + 0.45 * len(table))
    ax = fig.add_subplot()
    ax.barh(table["param"].astype(str), np.nan_to_num(values, nan=0.0), color="C0")
    for i, v in enumerate(values):
        ax.annotate(
            "n/a" if math.isnan(v) else f"{v:.3f}",
            (0 if math.isnan(v) else v, i),
            textcoords="offset points",
            xytext=(3, 0),
            va="center",
            fontsize=8,
        )
    note = importance.attrs.get("note", "")
    if note:
        ax.text(0.5, -0.25, note, transform=ax.transAxes, ha="center", fontsize=8, color="0.3")
    ax.set_xlim(0, max(1.0, float(np.nanmax(values)) if np.isfinite(values).any() else 1.0) * 1.12)
    ax.set_xlabel("importance (normalised to sum 1)")
    ax.set_ylabel("parameter")
    ax.set_title(f"Parameter importance for {metric}")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)
