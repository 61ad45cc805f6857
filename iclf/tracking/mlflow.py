"""MLflow tracking for sweeps: one parent run per sweep, one child run per Ray Tune trial.

Written on :class:`mlflow.MlflowClient` rather than Ray's MLflow integrations, which make duplicate runs
on retries and restores and have no parent runs (platform.md 1.7, 3):

* the driver creates the database, the experiment and the parent run before any trial starts (several
  processes creating a fresh SQLite database at once race on its schema);
* a trial's run is found-or-created by the tag ``ray_trial_id`` under its parent, so a retried or
  resumed trial reopens its run;
* :class:`RunLogger` never logs a metric step twice: it reads the run's history of the ``epoch``
  metric when it opens the run and skips epochs already there;
* runs are closed by the driver (:func:`close_run`), since a trial's own code does not run after its
  last report.

:func:`load_sweep_frames` reads a finished sweep back as the two DataFrames of :mod:`iclf.analysis`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from iclf.names import (
    CONFIG_KEY_TAG, CURVE_METRICS, DEVICE_SHARE_TAG, EPOCH, HEADLINE_METRICS, INTERRUPTED_TAG,
    PARAM_PREFIX, PARENT_TAG, ROLE_TAG, SEED_TAG, SWEEP_TAG, TRIAL_TAG, VAL_METRICS, device_share)
from iclf.tracking.uri import sqlite_path

MAX_BATCH = 100                   # MLflow accepts at most 100 params or tags per log_batch
MAX_VALUE = 6000                  # longest param value MLflow stores


# ----------------------------------------------------------------------------- URIs and setup


def connect(uri: str) -> MlflowClient:
    """A client on ``uri`` whose calls retry transient failures (:mod:`iclf.tracking.retry`); for
    SQLite, creates the directory and the database (schema) now. A store that cannot be used
    raises a one-line :class:`~iclf.tracking.errors.TrackingError` (:mod:`iclf.tracking.store`)."""
    from iclf.tracking.store import open_client

    return open_client(uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (a concurrent creator is tolerated)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise ValueError(f"MLflow experiment {name!r} is deleted; restore it "
                             f"(mlflow experiments restore) or choose tracking.experiment")
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def default_artifact_location(uri: str) -> str | None:
    """For SQLite, artifacts live next to the database (``<db dir>/mlartifacts``); servers decide."""
    path = sqlite_path(uri)
    return str(path.parent / "mlartifacts") if path is not None else None


# ---------------------------------------------------------------------------------- provenance


def git_state(path: str | Path) -> dict[str, str]:
    """``git_sha`` and ``git_dirty`` of the repository holding ``path`` ("unknown" outside git)."""
    cwd = Path(path).resolve()
    cwd = cwd if cwd.is_dir() else cwd.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        return {"git_sha": sha, "git_dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "unknown", "git_dirty": "unknown"}


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on, as ``version.<name>`` tags."""
    from importlib import metadata

    out = {"version.python": sys.version.split()[0]}
    for name in ("iclf", "torch", "torchvision", "ray", "optuna", "mlflow", "peft", "open_clip_torch"):
        try:
            out[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"version.{name}"] = "not installed"
    return out


# ------------------------------------------------------------------------------------- runs


def string_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Param values as MLflow stores them: lists and mappings as JSON, the rest as ``str``,
    cut at MAX_VALUE characters."""
    out = {}
    for k, v in params.items():
        s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
        out[str(k)] = s[:MAX_VALUE]
    return out


def create_sweep_run(client: MlflowClient, experiment_id: str, sweep: str,
                     tags: Mapping[str, Any]) -> str:
    """Create the parent run of a sweep (status RUNNING) and return its id."""
    all_tags = {ROLE_TAG: "sweep", SWEEP_TAG: sweep, **{k: str(v) for k, v in tags.items()}}
    return client.create_run(experiment_id, run_name=sweep, tags=all_tags).info.run_id


@dataclass(frozen=True)
class SweepRecord:
    """A sweep's place in MLflow: what its state file records and every trial needs."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def open_sweep(client: MlflowClient, *, experiment: str, sweep: str, tags: Mapping[str, Any],
               artifacts: Iterable[str | Path] = (), params: Sequence[str] | None = None,
               metric: str = "val/R1", mode: str = "max") -> SweepRecord:
    """Start a sweep's record: its experiment (created if missing), its parent run (RUNNING, with
    ``tags``) and the parent's ``artifacts`` (the spec files). With the swept ``params``, the
    experiment also gets the sweep's comparison view in the UI (:mod:`iclf.tracking.view`: its
    trials by ``metric`` under ``mode``)."""
    from iclf.tracking.view import ComparisonView, write_view

    uri = client.tracking_uri
    experiment_id = ensure_experiment(client, experiment, default_artifact_location(uri))
    parent_run_id = create_sweep_run(client, experiment_id, sweep, tags)
    if params is not None:
        write_view(client, experiment_id,
                   ComparisonView(sweep, parent_run_id, tuple(params), metric, mode))
    for path in artifacts:
        client.log_artifact(parent_run_id, str(path))
    return SweepRecord(uri, experiment_id, parent_run_id)


def resume_sweep(client: MlflowClient, record: SweepRecord) -> None:
    """Reopen a sweep's parent run (``--resume``)."""
    reopen_run(client, record.parent_run_id)


def close_sweep(client: MlflowClient, record: SweepRecord, status: str,
                tags: Mapping[str, Any]) -> None:
    """End a sweep's parent run with ``status`` and its final ``tags``."""
    close_run(client, record.parent_run_id, status, tags)


def reopen_run(client: MlflowClient, run_id: str) -> None:
    """Set a run back to RUNNING (a resumed sweep)."""
    client.update_run(run_id, status="RUNNING")


def find_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str,
                   trial_id: str) -> Any | None:
    """The child run of ``trial_id`` under ``parent_run_id``, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=2)
    if len(runs) > 1:
        raise RuntimeError(f"two MLflow runs carry {TRIAL_TAG}={trial_id} under {parent_run_id}")
    return runs[0] if runs else None


def open_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str,
                   run_name: str, tags: Mapping[str, Any]) -> tuple[str, bool]:
    """Find-or-create a trial's child run; returns ``(run_id, created)``. A found run is set RUNNING."""
    run = find_trial_run(client, experiment_id, parent_run_id, trial_id)
    if run is not None:
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        if INTERRUPTED_TAG in run.data.tags:  # an interrupted sweep resumed: the trial runs again
            client.delete_tag(run.info.run_id, INTERRUPTED_TAG)
        return run.info.run_id, False
    all_tags = {ROLE_TAG: "trial", TRIAL_TAG: trial_id, PARENT_TAG: parent_run_id,
                **{k: str(v) for k, v in tags.items()}}
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id, True


def close_run(client: MlflowClient, run_id: str, status: str,
              tags: Mapping[str, Any] | None = None) -> None:
    """Set tags, then end the run with ``status`` (FINISHED, FAILED or KILLED)."""
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)[:MAX_VALUE]) for k, v in tags.items()])
    client.set_terminated(run_id, status=status)


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Every child run of a sweep, oldest first."""
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = "
                                                                 f"'{parent_run_id}'",
                                  max_results=1000, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


class RunLogger:
    """Logs into one existing run, never twice the same epoch, params or one-off metric.

    ``epochs`` is the set of epochs the run already has (the steps of its ``epoch`` metric);
    ``log_epoch`` skips them. ``log_once`` logs only metrics the run does not have yet.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id
        run = client.get_run(run_id)
        self.params = dict(run.data.params)
        self.metrics = dict(run.data.metrics)
        self.epochs = {int(m.step) for m in client.get_metric_history(run_id, EPOCH)}

    def history(self, key: str) -> dict[int, float]:
        """``{step: value}`` of one metric of this run."""
        return {int(m.step): float(m.value) for m in self.client.get_metric_history(self.run_id, key)}

    def log_params(self, params: Mapping[str, Any]) -> int:
        """Log params the run does not have yet; returns how many were new. A param whose value
        differs from the logged one raises (MLflow params are immutable)."""
        new = {}
        for k, v in string_params(params).items():
            if k in self.params:
                if self.params[k] != v:
                    raise ValueError(f"MLflow run {self.run_id}: param {k} was {self.params[k]!r}, "
                                     f"now {v!r}; a resumed trial must keep its config")
                continue
            new[k] = v
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_BATCH])
        self.params.update(new)
        return len(new)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)[:MAX_VALUE]) for k, v in tags.items()]
        for i in range(0, len(items), MAX_BATCH):
            self.client.log_batch(self.run_id, tags=items[i:i + MAX_BATCH])

    def _metrics(self, values: Mapping[str, float], step: int) -> list[Metric]:
        ts = int(time.time() * 1000)
        return [Metric(k, float(v), ts, int(step)) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)]

    def log_epoch(self, epoch: int, values: Mapping[str, float]) -> bool:
        """Log one epoch's metrics at step ``epoch`` (``epoch`` itself included, last, as the marker
        that the epoch is complete) unless the run has it already; returns whether it logged."""
        if epoch in self.epochs:
            return False
        metrics = self._metrics({k: v for k, v in values.items() if k != EPOCH}, epoch)
        metrics.append(Metric(EPOCH, float(epoch), int(time.time() * 1000), int(epoch)))
        self.client.log_batch(self.run_id, metrics=metrics)
        self.epochs.add(epoch)
        self.metrics.update({m.key: m.value for m in metrics})
        return True

    def log_once(self, values: Mapping[str, float], step: int) -> list[str]:
        """Log the metrics the run does not have yet (final test metrics, counts); returns their keys."""
        fresh = {k: v for k, v in values.items() if k not in self.metrics}
        metrics = self._metrics(fresh, step)
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
            self.metrics.update({m.key: m.value for m in metrics})
        return [m.key for m in metrics]

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


# ------------------------------------------------------------------------------ reading back


def find_sweep_run(client: MlflowClient, sweep: str, experiment: str | None = None) -> Any:
    """The latest parent run of sweep ``sweep`` (optionally in one experiment)."""
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"no MLflow experiment {experiment!r}")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, filter_string=f"tags.`{ROLE_TAG}` = 'sweep' and "
                                                     f"tags.`{SWEEP_TAG}` = '{sweep}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ValueError(f"no sweep named {sweep!r} in {client.tracking_uri}")
    return runs[0]


def _param_value(text: str) -> Any:
    """An MLflow param string back to a scalar when it is one (``"8"`` -> 8); mappings stay JSON."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def load_sweep_frames(tracking_uri: str, parent_run_id: str | None = None, *,
                      sweep: str | None = None, experiment: str | None = None):
    """The ``trials`` and ``curves`` DataFrames of a sweep, as :mod:`iclf.analysis` expects them.

    ``trials``: one row per child run: ``run_id``, ``config_key``, ``param.<dotted>``, ``seed``,
    ``status``, ``val/R1 .. val/mINP`` (the selected epoch's), ``test/R1``, ``test/mAP``,
    ``test/mINP``, ``trainable_params``, ``device_seconds``, ``device_share`` (of its GPU; 1 without
    the tag), plus ``stopped_early`` and ``epochs``. ``curves``: one row per (run, epoch):
    ``run_id``, ``config_key``, ``epoch``, ``val/R1``, ``val/mAP``, ``val/mINP``. Pass the parent
    run id, or the sweep name.
    """
    import pandas as pd

    client = connect(tracking_uri)
    if parent_run_id is None:
        if sweep is None:
            raise ValueError("pass parent_run_id or sweep")
        parent = find_sweep_run(client, sweep, experiment)
    else:
        parent = client.get_run(parent_run_id)
    exp_id = parent.info.experiment_id
    rows, curve_rows = [], []
    for run in child_runs(client, exp_id, parent.info.run_id):
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        run_id = run.info.run_id
        key = tags.get(CONFIG_KEY_TAG, "")
        hist = {m: {int(x.step): float(x.value) for x in client.get_metric_history(run_id, m)}
                for m in VAL_METRICS}
        best_epoch = int(metrics.get("best_epoch", 0)) or None
        row: dict[str, Any] = {"run_id": run_id, "config_key": key}
        row.update({k: _param_value(v) for k, v in params.items() if k.startswith(PARAM_PREFIX)})
        row["seed"] = int(tags[SEED_TAG]) if SEED_TAG in tags else None
        row["status"] = run.info.status
        for m, h in hist.items():
            row[m] = h.get(best_epoch, math.nan) if best_epoch is not None else math.nan
        for m in (f"test/{n}" for n in HEADLINE_METRICS):
            row[m] = metrics.get(m, math.nan)
        row["trainable_params"] = int(metrics["trainable_params"]) if "trainable_params" in metrics \
            else None
        row["device_seconds"] = metrics.get("device_seconds", math.nan)
        row[DEVICE_SHARE_TAG] = device_share(tags.get(DEVICE_SHARE_TAG))
        row["stopped_early"] = tags.get("stopped_early") == "true"
        row["epochs"] = int(metrics.get(EPOCH, 0))
        rows.append(row)
        for epoch in sorted(hist["val/R1"]):
            curve_rows.append({"run_id": run_id, "config_key": key, "epoch": epoch,
                               **{m: hist[m].get(epoch, math.nan) for m in CURVE_METRICS}})
    trials = pd.DataFrame(rows)
    curves = pd.DataFrame(curve_rows, columns=["run_id", "config_key", "epoch", *CURVE_METRICS])
    if not trials.empty:
        trials["trainable_params"] = trials["trainable_params"].astype("Int64")
        trials["seed"] = trials["seed"].astype("Int64")
    return trials, curves


__all__ = ["RunLogger", "SweepRecord", "connect", "ensure_experiment", "default_artifact_location",
           "git_state", "package_versions", "create_sweep_run", "reopen_run", "find_trial_run",
           "open_trial_run", "close_run", "child_runs", "find_sweep_run", "load_sweep_frames",
           "open_sweep", "resume_sweep", "close_sweep"]
