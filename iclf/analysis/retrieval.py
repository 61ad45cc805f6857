"""The sweep report's retrieval picture: the same validation queries for the baseline and the best
configuration side by side, from the records their trials logged (:mod:`iclf.engine.retrieval`).

Both pictures come from trials of the same seed when the two configurations share one (the lowest
shared seed), so the difference shown is the configuration's. The records are read through a
``load(run_id)`` function the caller gives (the sweep layer reads MLflow; analysis does not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from iclf.analysis.summary import finished_trials

__all__ = ["pick_trials", "write_retrieval_comparison"]

RecordLoader = Callable[[str], "Mapping[str, Any] | None"]


def pick_trials(trials: pd.DataFrame, keys: list[str]) -> tuple[dict[str, str], int | None]:
    """``({config_key: run_id}, seed)``: one FINISHED trial per configuration of ``keys``, all of
    the lowest seed they share (else each configuration's lowest seed, and seed None)."""
    done = finished_trials(trials)
    rows = {key: done[done["config_key"] == key] for key in keys}
    if any(r.empty for r in rows.values()):
        return {}, None
    shared = set.intersection(*(set(int(s) for s in r["seed"].dropna()) for r in rows.values()))
    seed = min(shared) if shared else None
    picked = {}
    for key, r in rows.items():
        chosen = r[r["seed"] == seed] if seed is not None else r.sort_values("seed")
        picked[key] = str(chosen.iloc[0]["run_id"])
    return picked, seed


def write_retrieval_comparison(trials: pd.DataFrame, baseline_key: str | None, best_key: str | None,
                               load: RecordLoader, path: str | Path) -> tuple[Path | None, dict]:
    """Draw the baseline's and the best configuration's retrievals of the same queries side by side
    (the best alone when it is the baseline or there is none) into ``path``; returns the path (None
    when nothing could be drawn) and the facts: which runs, which seed, or why not."""
    from iclf.engine.retrieval import render_grid, render_side_by_side

    if best_key is None:
        return None, {"skipped": "no best configuration"}
    keys = [best_key] if baseline_key in (None, best_key) else [baseline_key, best_key]
    picked, seed = pick_trials(trials, keys)
    if not picked:
        return None, {"skipped": "no finished trial of the configurations"}
    records = {key: load(run_id) for key, run_id in picked.items()}
    missing = [picked[k] for k, r in records.items() if not r]
    facts: dict[str, Any] = {"runs": picked, "seed": seed}
    if missing:
        return None, {**facts, "skipped": f"no retrieval record in run(s) {', '.join(missing)}"}
    path = Path(path)
    seed_text = f"seed {seed}" if seed is not None else "lowest seed of each"
    if len(keys) == 1:
        what = "the baseline and best" if baseline_key == best_key else "best"
        render_grid(records[best_key], path,
                    title=f"{records[best_key].get('split', 'val')}: the {what} configuration "
                          f"{best_key or '(base)'} ({seed_text}), top-{records[best_key]['k']} "
                          f"images (green: same person, red: another)")
        return path, facts
    left, right = records[baseline_key], records[best_key]
    if [q["index"] for q in left["queries"]] != [q["index"] for q in right["queries"]]:
        return None, {**facts, "skipped": "the two runs pictured different queries"}
    render_side_by_side(left, right, path, left_title=f"baseline {baseline_key} ({seed_text})",
                        right_title=f"best {best_key} ({seed_text})")
    return path, facts
