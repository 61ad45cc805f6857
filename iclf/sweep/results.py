"""A sweep read back from MLflow: find it, load its frames, summarise it, name its best trial.

Works on a running, finished or resumed sweep, and on another machine that shares the tracking
store. A sweep is named by its spec file (``ablations/demo.yaml``: its name and tracking URI come
from the spec), its Ray directory (``runs/ray/demo``, whose ``sweep.json`` records the parent run)
or its name (``demo``, looked up by the ``iclf.sweep`` tag). Problems are :class:`UsageError`s
(one line, exit 2). Importing this module imports neither MLflow nor Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclf.errors import UsageError
from iclf.names import (
    DEFAULT_DB, METRIC_TAG, MODE_TAG, PARAM_PREFIX, ROLE_TAG, STATE_FILE, STATE_TAG, STORAGE_TAG,
    SWEEP_TAG)

__all__ = ["SweepRef", "resolve_sweep", "connect_existing", "sweep_frames", "sweep_summary",
           "best_trial", "best_facts", "export_best", "fmt_mean_std", "sweep_state", "partial_note", "write_sweep_report"]


@dataclass
class SweepRef:
    """A sweep's parent run and where it lives."""

    client: Any
    tracking_uri: str
    parent: Any  # mlflow.entities.Run

    @property
    def name(self) -> str:
        return self.parent.data.tags.get(SWEEP_TAG, self.parent.info.run_name)

    @property
    def parent_run_id(self) -> str:
        return self.parent.info.run_id

    @property
    def experiment_id(self) -> str:
        return self.parent.info.experiment_id

    @property
    def metric(self) -> str:
        return self.parent.data.tags.get(METRIC_TAG, "val/R1")

    @property
    def mode(self) -> str:
        return self.parent.data.tags.get(MODE_TAG, "max")

    @property
    def storage(self) -> Path | None:
        s = self.parent.data.tags.get(STORAGE_TAG)
        return Path(s) if s else None

    def resolved_spec(self) -> dict[str, Any]:
        """The resolved spec the sweep ran (parent artifact, else the copy in its Ray directory)."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(self.parent_run_id, "spec.resolved.json", tmp)
                return json.loads(Path(path).read_text())
            except Exception:  # noqa: BLE001 - no such artifact; try the local copy
                pass
        local = (self.storage or Path("/nonexistent")) / "spec.resolved.json"
        return json.loads(local.read_text()) if local.is_file() else {}

    def baseline(self) -> dict[str, Any] | None:
        base = self.resolved_spec().get("baseline") or None
        return dict(base) if isinstance(base, dict) else None


def connect_existing(uri: str):
    """A client on ``uri``, refusing a SQLite file that does not exist (nothing is created)."""
    from iclf.tracking.errors import TrackingError
    from iclf.tracking.mlflow import connect
    from iclf.tracking.uri import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UsageError(f"no tracking database at {db}: run a sweep first (iclf sweep "
                     f"ablations/demo.yaml) or pass --tracking-uri")
    try:
        return connect(uri)
    except TrackingError as exc:
        raise UsageError(str(exc)) from None


def resolve_sweep(target: str | None, tracking_uri: str | None = None) -> SweepRef:
    """Find the sweep ``target`` names (see the module docstring); ``None`` = the latest sweep."""
    from iclf.tracking.mlflow import find_sweep_run
    from iclf.tracking.uri import resolve_tracking_uri

    name = target
    parent_id = None
    uri = resolve_tracking_uri(tracking_uri, DEFAULT_DB) if tracking_uri else None
    path = Path(target) if target else None
    if path is not None and path.is_file() and path.suffix in (".yaml", ".yml"):
        from iclf.config import ConfigError
        from iclf.sweep.spec import load_spec
        from iclf.sweep.storage import sweep_paths

        try:
            spec = load_spec(path)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        paths = sweep_paths(spec)
        sweep_dir, spec_uri = paths.sweep_dir, paths.tracking_uri
        name, uri = spec.sweep_name, uri or spec_uri
        state = sweep_dir / STATE_FILE
        if state.is_file():
            parent_id = json.loads(state.read_text()).get("parent_run_id")
    elif path is not None and (path / STATE_FILE).is_file():
        state = json.loads((path / STATE_FILE).read_text())
        name, parent_id = state.get("sweep"), state.get("parent_run_id")
        uri = uri or state.get("tracking_uri")
    uri = uri or resolve_tracking_uri(None, DEFAULT_DB)
    client = connect_existing(uri)
    if parent_id is not None:
        try:
            return SweepRef(client, uri, client.get_run(parent_id))
        except Exception:  # noqa: BLE001 - the state file points at a run this database lacks
            pass
    if name is None:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.`{ROLE_TAG}` = 'sweep'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise UsageError(f"no sweep in {uri}: run one first (iclf sweep ablations/demo.yaml)")
        return SweepRef(client, uri, runs[0])
    try:
        return SweepRef(client, uri, find_sweep_run(client, name))
    except ValueError as exc:
        raise UsageError(f"{exc}; give the spec file, the sweep directory or --tracking-uri") from None


def sweep_frames(ref: SweepRef):
    """The sweep's ``trials`` and ``curves`` frames (:mod:`iclf.analysis`); UsageError when no
    trial has finished."""
    from iclf.tracking.mlflow import load_sweep_frames

    trials, curves = load_sweep_frames(ref.tracking_uri, ref.parent_run_id)
    if trials.empty or not (trials["status"] == "FINISHED").any():
        state = ref.parent.info.status
        raise UsageError(f"sweep {ref.name} ({ref.tracking_uri}, parent run {ref.parent_run_id}, "
                     f"{state}) has no finished trial yet")
    return trials, curves


def sweep_summary(ref: SweepRef, trials):
    """The analysis summary under the sweep's metric, mode and baseline (dropped when the baseline
    configuration has no finished trial yet)."""
    from iclf.analysis import summarize_sweep

    try:
        return summarize_sweep(trials, baseline=ref.baseline(), primary=ref.metric, mode=ref.mode)
    except ValueError:  # e.g. the baseline configuration has no finished trial (yet)
        return summarize_sweep(trials, baseline=None, primary=ref.metric, mode=ref.mode)


def best_trial(summary, trials, metric: str) -> Any:
    """The best configuration's best seed under the sweep's mode (ties: the lowest seed): the trial
    `reproduce` re-runs."""
    from iclf.analysis import best, finished_trials

    key = best(summary, summary.mode)
    if key is None:
        raise UsageError(f"no finished trial has {metric}")
    rows = finished_trials(trials)
    rows = rows[rows["config_key"].astype(str) == key].sort_values("seed")
    values = rows[metric].astype(float)
    return rows.loc[values.idxmax() if summary.mode == "max" else values.idxmin()]


def fmt_mean_std(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def write_sweep_report(trials, curves, out: Path, *, baseline: dict[str, Any] | None, metric: str,
                       mode: str, retrieval=None) -> dict[str, Path] | None:
    """The analysis report of a sweep into ``out``, written in a temporary directory beside it and
    renamed into place (a reader never sees half a report). None, and nothing written, when no
    trial finished; a baseline with no finished trial yet is left out rather than failing.
    ``retrieval``: run id -> its logged retrieval data, for the side-by-side picture."""
    import shutil

    from iclf.analysis import write_report

    if trials.empty or not (trials["status"] == "FINISHED").any():
        return None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out.parent))
    try:
        try:
            written = write_report(trials, curves, tmp, baseline=baseline, metric=metric,
                                   mode=mode, retrieval=retrieval)
        except ValueError:
            if baseline is None:
                raise
            written = write_report(trials, curves, tmp, baseline=None, metric=metric, mode=mode,
                                   retrieval=retrieval)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {k: out / Path(v).name for k, v in written.items()}


def sweep_state(ref: SweepRef) -> str:
    """Where the sweep stands: ``finished``; ``running`` only while a live driver holds its lease;
    ``interrupted`` (Ctrl-C, continue with --resume); ``stopped`` (its driver died without a word,
    e.g. SIGKILL: continue with --resume); else the parent run's MLflow status, lower-case. Where
    the sweep's directory is not visible from here, the parent run's ``iclf.state`` tag decides."""
    from iclf.sweep.lease import held_by_live_driver

    status = ref.parent.info.status
    if status == "FINISHED":
        return "finished"
    tag = ref.parent.data.tags.get(STATE_TAG)
    if ref.storage is not None and ref.storage.is_dir():
        if held_by_live_driver(ref.storage):
            return "running"
        if tag == "interrupted":
            return "interrupted"
        return "stopped" if status == "RUNNING" else status.lower()
    return tag or status.lower()


def partial_note(state: str) -> str:
    """The words that label a result computed from a sweep that has not finished."""
    if state == "finished":
        return ""
    if state == "stopped":
        return "its driver stopped before the end: partial; continue with --resume"
    if state == "interrupted":
        return "the sweep is interrupted: partial; continue with --resume"
    return f"the sweep is {state}: partial"


def best_facts(ref: SweepRef) -> dict[str, Any]:
    """The best configuration by its mean over seeds of the sweep's validation metric."""
    trials, _ = sweep_frames(ref)
    summary = sweep_summary(ref, trials)
    trial = best_trial(summary, trials, ref.metric)
    key = str(trial["config_key"])
    row = summary.table[summary.table["config_key"] == key].iloc[0]
    metrics = {}
    for m in summary.metrics:
        metrics[m] = {"mean": _num(row[f"{m} mean"]), "std": _num(row[f"{m} std"]),
                      "ci95": _num(row[f"{m} ci95"]), "n": int(row[f"{m} n"])}
    params = {c[len(PARAM_PREFIX):]: _plain(row[c]) for c in summary.params}
    return {"sweep": ref.name, "tracking_uri": ref.tracking_uri, "metric": ref.metric,
            "config_key": key, "params": params, "seeds": str(row["seeds"]),
            "metrics": metrics, "trial_run_id": str(trial["run_id"]), "trial_seed": int(trial["seed"]),
            "trainable_params": _plain(row.get("trainable_params")),
            "state": sweep_state(ref), "partial": ref.parent.info.status != "FINISHED"}


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def export_best(ref: SweepRef, run_id: str, dest: Path, facts: dict[str, Any]) -> Path:
    """Write the best trial's resolved config as an experiment file ``iclf train`` accepts."""
    import dataclasses

    import yaml

    from iclf.config import load_config, to_dict

    from iclf.sweep.reproduce import load_source_config

    cfg = load_source_config(ref.client, ref.client.get_run(run_id))
    cfg = dataclasses.replace(cfg, name=f"{ref.name}-best", output_dir="runs/train")
    m = facts["metrics"].get(ref.metric, {})
    header = (f"# Best configuration of sweep {ref.name} by mean {ref.metric} over seeds:\n"
              f"#   {facts['config_key'] or '(base)'}: {fmt_mean_std(m.get('mean'), m.get('std'))} "
              f"(n={m.get('n')}, seeds {facts['seeds']})\n"
              f"# From MLflow run {run_id} (seed {cfg.seed}) in {ref.tracking_uri}.\n"
              f"# Train it: iclf train {dest}\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = dest.with_name(f".{dest.name}.tmp")
    tmp_file.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    try:
        load_config(tmp_file)  # what `iclf train` will do with it
    except Exception:
        tmp_file.unlink()
        raise
    tmp_file.replace(dest)
    return dest


