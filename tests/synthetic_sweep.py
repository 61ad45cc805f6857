"""A synthetic finished sweep in the :mod:`iclf.analysis` layout, for tests and demos.

Every configuration of a parameter grid gets one run per seed, with metrics drawn around a known
per-configuration mean, per-epoch validation curves, trainable-parameter counts and device time,
plus a few FAILED runs that any analysis must ignore.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from iclf.analysis.summary import PARAM_PREFIX

__all__ = ["config_key", "synthetic_sweep"]


def config_key(params: Mapping[str, Any]) -> str:
    """``"a=1,b=x"``: the parameters of a configuration without the seed, in the given order."""
    return ",".join(f"{k}={v}" for k, v in params.items())


def _default_effect(grid: Mapping[str, Sequence[Any]]) -> Callable[[Mapping[str, Any]], float]:
    """Mean val/R1 = 60 + 2, 0.5, 0.125, ... points per grid step of the 1st, 2nd, 3rd ... param."""

    def effect(config: Mapping[str, Any]) -> float:
        steps = [list(grid[k]).index(config[k]) for k in grid]
        return 60.0 + sum(2.0 * 0.25**i * s for i, s in enumerate(steps))

    return effect


def _default_trainable(config: Mapping[str, Any]) -> int:
    rank = config.get("lora.rank")
    if rank is None:
        return 2_000_000
    return 150_000_000 if int(rank) == 0 else 2_000_000 + 40_000 * int(rank)


def synthetic_sweep(
    grid: Mapping[str, Sequence[Any]],
    seeds: Sequence[int] = (0, 1, 2),
    effect: Callable[[Mapping[str, Any]], float] | None = None,
    noise: float = 0.5,
    epochs: int = 4,
    n_failed: int = 1,
    rng_seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, curves)`` frames for the full grid times ``seeds``.

    ``effect(config) -> mean val/R1`` sets the true means (default: the first parameter matters
    most); metrics get Gaussian noise of std ``noise``. ``n_failed`` extra FAILED runs carry
    deliberately wrong metrics (0.0) so that counting them would show.
    """
    if not grid:
        raise ValueError("grid needs at least one parameter")
    effect = effect or _default_effect(grid)
    rng = np.random.default_rng(rng_seed)
    names = list(grid)
    trial_rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    for values in itertools.product(*(grid[k] for k in names)):
        config = dict(zip(names, values))
        key = config_key(config)
        for seed in seeds:
            run_id = f"run{len(trial_rows):04d}"
            r1 = effect(config) + noise * rng.standard_normal()
            row = {
                "run_id": run_id,
                "config_key": key,
                **{PARAM_PREFIX + k: v for k, v in config.items()},
                "seed": int(seed),
                "status": "FINISHED",
                "val/R1": r1,
                "val/R5": r1 + 15.0,
                "val/R10": min(100.0, r1 + 22.0),
                "val/mAP": r1 - 8.0 + 0.3 * noise * rng.standard_normal(),
                "val/mINP": r1 - 20.0 + 0.3 * noise * rng.standard_normal(),
                "test/R1": r1 - 1.0 + noise * rng.standard_normal(),
                "test/mAP": r1 - 9.0 + noise * rng.standard_normal(),
                "test/mINP": r1 - 21.0 + noise * rng.standard_normal(),
                "trainable_params": _default_trainable(config),
                "device_seconds": 1800.0 * (1.0 + 0.1 * rng.random()),
            }
            trial_rows.append(row)
            for epoch in range(1, epochs + 1):
                gap = 3.0 * (epochs - epoch)  # curves rise to the final value
                curve_rows.append(
                    {
                        "run_id": run_id,
                        "config_key": key,
                        "epoch": epoch,
                        "val/R1": row["val/R1"] - gap,
                        "val/mAP": row["val/mAP"] - gap,
                        "val/mINP": row["val/mINP"] - gap,
                    }
                )
    for i in range(n_failed):
        failed = dict(trial_rows[i % len(trial_rows)])
        failed.update(run_id=f"run{len(trial_rows):04d}", status="FAILED", device_seconds=600.0)
        failed.update({k: 0.0 for k in ("val/R1", "val/R5", "val/R10", "val/mAP", "val/mINP")})
        failed.update({k: np.nan for k in ("test/R1", "test/mAP", "test/mINP")})
        trial_rows.append(failed)
    return pd.DataFrame(trial_rows), pd.DataFrame(curve_rows)
