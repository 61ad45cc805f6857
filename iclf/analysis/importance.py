"""Parameter importance of a finished sweep, computed by Optuna's importance evaluators.

MLflow has no importance panel (platform.md, section 2.4), so the finished trials are replayed
into an in-memory Optuna study, one Optuna trial per FINISHED run (seeds included, so seed noise
weighs against small effects), and ``optuna.importance.get_param_importances`` scores the ablated
parameters (PED-ANOVA by default in Optuna 5). Optuna is imported inside the function only.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from iclf.analysis.summary import PARAM_PREFIX, finished_trials, param_columns

__all__ = ["EVALUATORS", "build_distribution", "param_importances"]

EVALUATORS = ("ped_anova", "fanova", "mean_decrease_impurity")


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _as_number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def build_distribution(values: Sequence[Any], categorical_max_values: int = 4) -> tuple[Any, list]:
    """An Optuna distribution for one parameter's observed values, and the values cast to it.

    Non-numeric parameters, and numeric ones with at most ``categorical_max_values`` distinct
    values (an ablation grid such as fusion depth 1/2/4), become ``CategoricalDistribution``;
    other integers ``IntDistribution``, other numbers ``FloatDistribution``, on a log scale when
    positive and spanning two decades or more.
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    numbers = [_as_number(v) for v in values]
    distinct = list(dict.fromkeys(_native(v) for v in values))
    if any(n is None for n in numbers):  # non-numeric: categories as given, str if mixed
        if len({type(v) for v in distinct}) > 1:
            values, distinct = [str(v) for v in values], list(dict.fromkeys(map(str, distinct)))
        return CategoricalDistribution(distinct), [_native(v) for v in values]
    integral = all(float(n).is_integer() for n in numbers)
    cast = [int(n) if integral else float(n) for n in numbers]
    unique = sorted(set(cast))
    if len(unique) <= categorical_max_values:
        return CategoricalDistribution(unique), cast
    low, high = unique[0], unique[-1]
    log = low > 0 and high / low >= 100
    if integral:
        return IntDistribution(low, high, log=log), cast
    return FloatDistribution(low, high, log=log), cast


def _describe(dist: Any) -> str:
    name = type(dist).__name__.replace("Distribution", "").lower()
    if name == "categorical":
        return f"categorical{list(dist.choices)}"
    return f"{name}[{dist.low}, {dist.high}]" + (" log" if dist.log else "")


def _make_evaluator(evaluator: Any, seed: int | None) -> Any:
    import optuna.importance as oi

    if evaluator is None or isinstance(evaluator, oi.BaseImportanceEvaluator):
        return evaluator
    classes = {
        "ped_anova": oi.PedAnovaImportanceEvaluator,
        "fanova": oi.FanovaImportanceEvaluator,
        "mean_decrease_impurity": oi.MeanDecreaseImpurityImportanceEvaluator,
    }
    if evaluator not in classes:
        raise ValueError(f"unknown importance evaluator {evaluator!r}; choose one of {EVALUATORS}")
    cls = classes[evaluator]
    accepts_seed = "seed" in inspect.signature(cls).parameters
    return cls(seed=seed) if accepts_seed and seed is not None else cls()


def _result(params: Sequence[str], scores: dict, dists: dict, note: str) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "param": list(params),
            "importance": [float(scores.get(p, math.nan)) for p in params],
            "distribution": [dists.get(p, "") for p in params],
        }
    )
    table = table.sort_values(["importance", "param"], ascending=[False, True], na_position="last")
    table = table.reset_index(drop=True)
    table.attrs["note"] = note
    if note:
        warnings.warn(note, stacklevel=3)
    return table


def param_importances(
    trials: pd.DataFrame,
    metric: str = "val/R1",
    params: Sequence[str] | None = None,
    direction: str = "maximize",
    evaluator: Any = "ped_anova",
    seed: int | None = 0,
    categorical_max_values: int = 4,
) -> pd.DataFrame:
    """Importance of each ablated parameter for ``metric`` over the FINISHED trials.

    ``params`` are dotted names, with or without the ``param.`` prefix (default: every
    ``param.*`` column). ``evaluator`` is one of :data:`EVALUATORS` or an Optuna evaluator
    instance; ``seed`` is passed when the evaluator takes one (fANOVA, MDI; PED-ANOVA is
    deterministic). Returns columns ``param`` (dotted name without prefix), ``importance``
    (normalised to sum 1) and ``distribution``, most important first; exactly one row per
    parameter. Degenerate sweeps do not raise: a parameter with a single value scores 0, a sole
    varying parameter scores 1, and with fewer than two trials or a constant metric every score is
    NaN; ``table.attrs["note"]`` (also warned) says which case applied.
    """
    done = finished_trials(trials)
    if metric not in trials.columns:
        raise ValueError(
            f"trials frame has no metric column {metric!r}; has {list(trials.columns)}"
        )
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    available = param_columns(trials)
    if params is None:
        columns = available
    else:
        columns = [p if p.startswith(PARAM_PREFIX) else PARAM_PREFIX + p for p in params]
        unknown = [c for c in columns if c not in available]
        if unknown:
            raise ValueError(
                f"parameter(s) {unknown} are not columns of the trials; have {available}"
            )
    if not columns:
        raise ValueError("trials frame has no param.* columns: nothing was ablated")
    names = [c[len(PARAM_PREFIX) :] for c in columns]

    rows = done[np.isfinite(done[metric].to_numpy(float))].reset_index(drop=True)
    dists: dict[str, Any] = {}
    cast: dict[str, list] = {}
    for name, col in zip(names, columns):
        present = rows[col][~rows[col].isna()]
        if len(present):
            dists[name], cast[name] = build_distribution(list(present), categorical_max_values)
            cast[name] = dict(zip(present.index, cast[name]))
    described = {n: _describe(d) for n, d in dists.items()}
    varying = [n for n in names if n in dists and not dists[n].single()]

    if len(rows) < 2:
        return _result(
            names,
            {},
            described,
            f"importance undefined: {len(rows)} finished trial(s) with a finite {metric}",
        )
    if np.ptp(rows[metric].to_numpy(float)) == 0.0:
        return _result(names, {}, described, f"importance undefined: {metric} is constant")
    if not varying:
        return _result(names, {}, described, "importance undefined: no parameter varies")
    scores = {n: 0.0 for n in names}
    if len(varying) == 1:
        scores[varying[0]] = 1.0
        return _result(names, scores, described, f"only {varying[0]} varies: importance 1")

    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction=direction)
        frozen = []
        for index, value in zip(rows.index, rows[metric].to_numpy(float)):
            trial_params = {n: cast[n][index] for n in varying if index in cast[n]}
            frozen.append(
                optuna.trial.create_trial(
                    params=trial_params,
                    distributions={n: dists[n] for n in trial_params},
                    value=float(value),
                )
            )
        study.add_trials(frozen)
        # Sorted names: with explicit params, Optuna 5's fANOVA and MDI evaluators order their
        # columns by name but label the scores in the order given, mislabelling any other order.
        scores.update(
            optuna.importance.get_param_importances(
                study, evaluator=_make_evaluator(evaluator, seed), params=sorted(varying)
            )
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    return _result(names, scores, described, "")
