"""Run an ablation spec on Ray Tune: Optuna/grid/random search, ASHA or FIFO, tracked in MLflow.

The driver, :func:`run_sweep`, runs in phases:

1. ``_check_start``: a fresh sweep must not exist yet; ``resume`` needs one with the same spec;
2. :func:`prepare_shared_inputs`: what every trial shares (the synthetic dataset, the tiny
   pretrained backbone) is built once, before any trial starts, and the dataset fingerprinted;
3. ``_open_record`` / ``_resume_record``: the sweep's MLflow record (experiment and parent run, see
   :mod:`iclf.tracking.mlflow`) is created, or reopened with ``resume``, and ``sweep.json`` written
   (:mod:`iclf.sweep.storage`), in a thread while Ray starts (two waits of seconds, side by side;
   the record's error, if any, is the one raised, and the Ray started is shut down). A ``resume``
   of a sweep stopped before Tune saved any experiment state starts its trials again
   (``_restart_trials``);
4. :func:`build_tuner` + ``fit``: a :class:`ray.tune.Tuner` around :func:`run_trial`, a thin
   trainable that resolves the trial's experiment config and calls :func:`iclf.engine.train` with a
   :class:`TuneReporter`; a driver-side callback (:class:`CloseRuns`) closes each child run:
   FINISHED, FAILED after the last retry, with ``stopped_early=true`` when ASHA ended it before the
   last epoch (complete as far as the sweep goes, so FINISHED; KILLED is for runs whose trial never
   completed when the sweep ended);
5. :func:`evaluate_stopped_trials`: the test split for the selected checkpoint of ASHA-stopped trials
   (their process ended at the stop, before the engine's own final evaluation);
6. :func:`finalize`: the analysis report, logged to the parent run, which is closed FINISHED. An
   interrupted sweep leaves the parent RUNNING; ``resume`` reopens it and continues the Tune
   experiment.

Trial outcomes are counted from Tune's public results (``ResultGrid``).

Cost and disk: when the record is open the projected device-hours are printed and logged to the
parent run (:func:`iclf.sweep.plan.announce`), and ``finalize`` logs the actual ones beside them.
A trial whose run is closed FINISHED releases its resumable state (``CloseRuns``, then once more
for every FINISHED trial in ``finalize``; :mod:`iclf.sweep.cleanup`): it keeps its selected
weights, config and metrics.

Tune's metric is ``objective``: the best value so far of the spec's validation metric (max or min as
the spec's mode says), reported every epoch together with the engine's metrics; ASHA's time attribute
is ``epoch`` (completed epochs). Test metrics are logged to MLflow only; they are never reported to
Tune, so neither the searcher nor the scheduler can see them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ray import tune

from iclf.names import (
    CONFIG_KEY_TAG, DEVICE_SHARE_TAG, EPOCH, INTERRUPTED_TAG, METRIC_TAG, MODE_TAG, OBJECTIVE,
    RUN_DIR_TAG, SEED_TAG, STATE_TAG, STORAGE_TAG, SWEEP_TAG, best_so_far, better, without_test,
    worst)
from iclf.sweep import lease, snapshot
from iclf.sweep.spec import AblationSpec, Param, config_key, flat_params
from iclf.sweep.storage import SweepPaths, read_state, sweep_paths, write_state
from iclf.tracking.reporter import MlflowReporter, log_retrieval, log_weights



class SweepError(RuntimeError):
    """A sweep cannot start or resume (the message says what to do)."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver (passed with ``tune.with_parameters``)."""

    spec: AblationSpec
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_dir: str
    tags: Mapping[str, str] = field(default_factory=dict)
    # The driver's tracking login (MLFLOW_TRACKING_USERNAME/PASSWORD, ...), set in the trial's
    # environment before it connects: Ray workers do not inherit the driver's environment.
    credentials: Any = None
    # Called as ``epoch_hook(epoch, trial_id)`` after an epoch is logged to MLflow and before it is
    # reported to Tune (fault-injection tests; custom instrumentation). Must be picklable.
    epoch_hook: Callable[[int, str], None] | None = None
    # The sweep's verbosity (build_tuner sets it): below 2, Ray's per-checkpoint INFO lines in the
    # trial's log are dropped (iclf.sweep.progress.quiet_trial_logs).
    verbose: int = 1


# ---------------------------------------------------------------------- the space as Tune sees it

PARAMS = "params"  # a trial config's parameters live under config["params"]; the seed under "seed"


def _label(value: Any) -> Any:
    """A categorical value Optuna can store: scalars as they are, anything else as canonical JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _suggest(param: Param, trial: Any, name: str) -> Any:
    """One value of ``param`` from an Optuna trial (keyword arguments, as Optuna 5 requires)."""
    if param.kind in ("grid", "choice"):
        labels = [_label(v) for v in param.values]
        picked = trial.suggest_categorical(name, labels)
        return copy.deepcopy(param.values[labels.index(picked)])
    if param.kind == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(name, float(param.low), float(param.high),
                               log=param.kind == "loguniform")


class DefineByRun:
    """The spec's space as an Optuna define-by-run function: each active parameter suggested in
    order, named as Tune flattens it (``params/<key>``); with one seed it also returns the seed.

    A class, not a closure: Tune pickles the searcher, this function with it, into the experiment
    state it saves every few seconds, and restores it from there on ``--resume``."""

    def __init__(self, spec: AblationSpec):
        self.spec = spec

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        chosen: dict[str, Any] = {}
        for p in self.spec.space:
            if p.active(chosen):
                chosen[p.key] = _suggest(p, trial, f"{PARAMS}/{p.key}")
        return {"seed": self.spec.seeds[0]} if len(self.spec.seeds) == 1 else None


def define_by_run(spec: AblationSpec) -> DefineByRun:
    return DefineByRun(spec)


def trial_params(spec: AblationSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter values of a Tune trial config, in space order, Optuna labels mapped back."""
    raw = dict(config.get(PARAMS) or {})
    out: dict[str, Any] = {}
    for p in spec.space:
        if p.key in raw:
            value = raw[p.key]
            if p.kind in ("grid", "choice") and not p.contains(value):
                labels = [_label(v) for v in p.values]
                if value in labels:
                    value = copy.deepcopy(p.values[labels.index(value)])
            out[p.key] = value
    return out


def trial_seed(spec: AblationSpec, config: Mapping[str, Any]) -> int:
    """A trial's seed: given directly, or Ray's Repeater's ``__trial_index__`` into the seeds."""
    if "seed" in config:
        return int(config["seed"])
    return int(spec.seeds[int(config.get("__trial_index__", 0)) % len(spec.seeds)])


# ------------------------------------------------------------------------------------ trial side


class TuneReporter(MlflowReporter):
    """The engine's Reporter for a Tune trial: MLflow first (:class:`MlflowReporter`), then
    ``tune.report`` with the checkpoint and ``objective``, the best value so far of the spec's
    metric under its mode.

    Logging precedes the report because Tune may end the process right after the report.
    """

    def __init__(self, logger, *, metric: str, mode: str, trial_id: str,
                 epoch_hook: Callable[[int, str], None] | None = None, system_metrics=None):
        super().__init__(logger)
        self.metric = metric
        self.mode = mode
        self.trial_id = trial_id
        self.epoch_hook = epoch_hook
        self.system_metrics = system_metrics  # stopped before the last report (see on_epoch)
        self.best: float | None = None
        self.finished = False

    def on_start(self, info: dict[str, Any]) -> None:
        super().on_start(info)
        resumed = int(info.get("resumed_from_epoch", 0))
        self.best = best_so_far((value for step, value in self.logger.history(self.metric).items()
                                 if step <= resumed), self.mode)

    def on_result(self, result) -> None:
        super().on_result(result)
        self.finished = True  # the next on_epoch is the trial's last report

    def on_epoch(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        from iclf.engine.checkpoint import SPARE_FILE, STATE_FILE
        from iclf.sweep import spares

        super().on_epoch(epoch, metrics, checkpoint_dir)
        if self.finished and self.system_metrics is not None:
            self.system_metrics.stop()  # Tune may end the process right after the last report
        report = without_test(metrics)
        value = report.get(self.metric)
        if value is not None and math.isfinite(value) and better(value, self.best, self.mode):
            self.best = value
        if self.epoch_hook is not None:
            self.epoch_hook(int(epoch), self.trial_id)
        report[EPOCH] = int(epoch)
        # no evaluation yet (eval_period > 1): the worst value, never NaN (Tune needs the key)
        report[OBJECTIVE] = self.best if self.best is not None else worst(self.mode)
        if self.finished:  # the last epoch: nothing left to resume, no state was written
            tune.report(report)
            return
        # The epoch's state is persisted once: hard links in <run dir>/snapshots/, and Tune keeps a
        # pointer to them rather than a copy of every file (iclf.sweep.snapshot).
        run_dir = Path(checkpoint_dir).parent
        snap = snapshot.take(checkpoint_dir, run_dir / snapshot.SNAPSHOTS_DIR, epoch)
        pointer = snapshot.write_pointer(run_dir / snapshot.POINTER_DIR, snap, epoch)
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(pointer)))
        # Tune has the epoch's pointer: the snapshots of the two newest epochs are all it can need.
        # The state of the one pruned is the next epoch's state file, overwritten in place.
        spare = Path(checkpoint_dir) / SPARE_FILE
        snapshot.prune(run_dir / snapshot.SNAPSHOTS_DIR, int(epoch), recycle={STATE_FILE: spare})
        if not spare.exists():  # none of its own yet: a finished trial's (iclf.sweep.spares)
            spares.claim(spares.pool_of(run_dir), spare)


def completed_result(client, run, metric: str, mode: str) -> dict[str, Any]:
    """What a FINISHED child run's trial last reported to Tune: the last epoch's metrics (never test
    ones), ``epoch`` and ``objective`` (the best ``metric`` over its epochs)."""
    report = without_test(run.data.metrics)
    best = best_so_far((m.value for m in client.get_metric_history(run.info.run_id, metric)), mode)
    report[EPOCH] = int(run.data.metrics.get(EPOCH, 0))
    report[OBJECTIVE] = best if best is not None else worst(mode)
    return report


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable: one configuration and seed, trained by the engine."""
    import ray

    from iclf.engine import train
    from iclf.tracking.mlflow import RunLogger, connect, find_trial_run, open_trial_run
    from iclf.tracking.system import SystemMetrics

    spec = ctx.spec
    if ctx.verbose < 2:
        from iclf.sweep.progress import quiet_trial_logs

        quiet_trial_logs()
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    params = trial_params(spec, config)
    seed = trial_seed(spec, config)
    runs_dir = _runs_dir(ctx.sweep_dir)
    cfg = spec.trial_config(params, seed, name=trial_id, output_dir=str(runs_dir))
    key = config_key(params)
    if ctx.credentials:
        ctx.credentials.apply()
    client = connect(ctx.tracking_uri)
    done = find_trial_run(client, ctx.experiment_id, ctx.parent_run_id, trial_id)
    if done is not None and done.info.status == "FINISHED":
        # Completed under a driver that was stopped before Tune saved its experiment state (saved
        # every few seconds): --resume restarted the trial. Report its result again, train nothing.
        tune.report(completed_result(client, done, spec.metric, spec.mode))
        return
    run_id, _ = open_trial_run(
        client, ctx.experiment_id, ctx.parent_run_id, trial_id,
        run_name=f"{key or 'base'} seed={seed}",
        tags={**ctx.tags, CONFIG_KEY_TAG: key, SEED_TAG: seed, "trial_name": tctx.get_trial_name(),
              "node_id": ray.get_runtime_context().get_node_id()})
    logger = RunLogger(client, run_id)
    gpu = float(tctx.get_trial_resources().required_resources.get("GPU", 0.0))
    # the share of its GPU the trial holds: what it costs is its time x this (iclf summary)
    logger.set_tags({"node_id": ray.get_runtime_context().get_node_id(),
                     **({DEVICE_SHARE_TAG: f"{gpu:g}"} if gpu > 0 else {})})
    logger.log_params(flat_params(params))
    # CPU/GPU utilisation and memory as system/... metrics of the run (iclf.tracking.system)
    system = SystemMetrics.start(run_id, ctx.tracking_uri)
    reporter = TuneReporter(logger, metric=spec.metric, mode=spec.mode, trial_id=trial_id,
                            epoch_hook=ctx.epoch_hook, system_metrics=system)
    checkpoint = tune.get_checkpoint()
    resume_from = None
    if checkpoint is not None:
        found, skipped = resume_point(Path(checkpoint.path),
                                      cfg.run_dir / snapshot.SNAPSHOTS_DIR)
        resume_from = found[1] if found else None
        logger.set_tags({"resumed_from": found[0].name if found else "scratch",
                         **({"skipped_checkpoints": "; ".join(skipped)} if skipped else {})})
    from iclf.engine.checkpoint import SPARE_FILE
    from iclf.sweep import spares
    from iclf.sweep.cleanup import CHECKPOINT_DIR

    # its first state overwrites a finished trial's (iclf.sweep.spares)
    spares.claim(spares.pool_of(cfg.run_dir), cfg.run_dir / CHECKPOINT_DIR / SPARE_FILE)
    try:
        # state.pt is not flushed to the disk (its epoch snapshot is checked, CRC-32, when read
        # back; the older snapshot is the fallback: resume_point), nor written after the last
        # epoch (the trial is then complete: only its selected weights stay)
        train(cfg, reporter=reporter, resume_from=resume_from, run_dir=cfg.run_dir,
              progress=False, console=False, durable_state=False, final_state=False)
    finally:
        if system is not None:
            system.stop()


def resume_point(latest: Path, snapshots_dir: Path) -> tuple[tuple[Path, Path] | None, list[str]]:
    """Where a restarted trial resumes: Tune's latest checkpoint if it can be read, else the newest
    older one Tune kept beside it (``checkpoint_<n>``), else nothing (from scratch). A checkpoint is
    read through its pointer (:func:`iclf.sweep.snapshot.resolve`: the epoch's snapshot under
    ``snapshots_dir``). Returns (Tune's checkpoint, the directory holding its state) or None, and
    why each newer one was skipped, so a broken file costs epochs, never the trial or its retries."""
    from iclf.engine.checkpoint import unreadable

    def index(path: Path) -> int:
        digits = path.name.rsplit("_", 1)[-1]
        return int(digits) if digits.isdigit() else -1

    older = sorted((p for p in latest.parent.glob("checkpoint_*")
                    if p.is_dir() and index(p) < index(latest)), key=index, reverse=True)
    skipped = []
    for candidate in [latest, *older]:
        state_dir = snapshot.resolve(candidate, snapshots_dir)
        problem = unreadable(state_dir) if state_dir.is_dir() else \
            f"{state_dir}: its snapshot is gone"
        if problem is None:
            return (candidate, state_dir), skipped
        skipped.append(f"{candidate.name}: {problem}")
    return None, skipped


# ----------------------------------------------------------------------------------- driver side


class CloseRuns(tune.Callback):
    """Driver-side callback that ends each trial's MLflow run (the trial cannot: Tune ends its
    process after the last report)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 spare_limit: int = 0):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.spare_limit = spare_limit  # a finished trial's states kept for others (iclf.sweep.spares)
        self._client = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self):
        from iclf.tracking.mlflow import connect

        if self._client is None:
            self._client = connect(self.tracking_uri)
        return self._client

    def _run_id(self, trial) -> str:
        from iclf.tracking.mlflow import open_trial_run

        run = self._find(trial)
        if run is not None:
            return run
        # The trial failed before it could open its run: record the failure anyway.
        run_id, _ = open_trial_run(self.client, self.experiment_id, self.parent_run_id,
                                   trial.trial_id, run_name=str(trial), tags={})
        return run_id

    def _find(self, trial) -> str | None:
        from iclf.tracking.mlflow import find_trial_run

        run = find_trial_run(self.client, self.experiment_id, self.parent_run_id, trial.trial_id)
        return run.info.run_id if run is not None else None

    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self._find(trial)
        if run_id is not None:
            self.client.set_tag(run_id, "retries", str(trial.num_failures))

    def on_trial_complete(self, iteration, trials, trial, **info):
        from iclf.tracking.mlflow import close_run

        last = trial.last_result or {}
        epochs = int(last.get(EPOCH, 0))
        run_id = self._run_id(trial)
        close_run(self.client, run_id, "FINISHED",
                  {"stopped_early": str(epochs < self.max_epochs).lower(),
                   "epochs_done": epochs, "retries": trial.num_failures})
        self._release(trial, run_id)

    def _release(self, trial, run_id: str) -> None:
        """The run is FINISHED: the trial's resumable state goes (:mod:`iclf.sweep.cleanup`); its
        selected weights become one file with their MLflow artifact once that is logged (an
        ASHA-stopped trial's are logged after fit, and shared by ``finalize``)."""
        from iclf.sweep import cleanup, spares

        try:
            run = self.client.get_run(run_id)
            run_dir = run.data.tags.get(RUN_DIR_TAG)
            trial_dir = Path(trial.path) if trial.path and Path(trial.path).is_dir() else None
            # (a callback pickled by a sweep started before spares has no spare_limit)
            limit = getattr(self, "spare_limit", 0)
            cleanup.release_trial(trial_dir, run_dir, note=f"MLflow run {run_id}.",
                                  spare_pool=spares.pool_of(run_dir) if run_dir and limit else None,
                                  spare_limit=limit)
            cleanup.share_weights(run_dir, cleanup.local_artifact_dir(run.info.artifact_uri))
        except OSError as exc:  # disk use is not a result: say it, go on
            print(f"[iclf] trial {trial.trial_id}: its checkpoints stay on disk ({exc})",
                  file=sys.stderr)

    def on_trial_error(self, iteration, trials, trial, **info):
        from iclf.tracking.mlflow import close_run

        # Tune counts the failure that ended the trial too: the retries are one fewer.
        close_run(self.client, self._run_id(trial), "FAILED",
                  {"error": _error_text(trial), "retries": max(trial.num_failures - 1, 0)})


def _error_text(trial) -> str:
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text(errors="replace").strip().splitlines() if ln.strip()]
        return lines[-1][:1000] if lines else "error"
    return "error (no error file)"


@dataclass
class SweepOutcome:
    """What a finished (or interrupted) sweep produced."""

    sweep: str
    sweep_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    trials: int
    finished: int
    failed: int
    timings: dict[str, float] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM: continue with --resume

    @property
    def completed(self) -> bool:
        """Every trial ended (finished or failed): the sweep is not just interrupted."""
        return self.trials > 0 and self.finished + self.failed == self.trials

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sweep_dir"] = str(self.sweep_dir)
        d["completed"] = self.completed
        return d


def prepare_shared_inputs(spec: AblationSpec) -> str:
    """Build the synthetic dataset, the tiny pretrained backbone and the decoded-image cache of the
    training images once, on the driver, before any trial starts (trials would otherwise build them
    concurrently, or each decode every image); returns the dataset fingerprint."""
    from iclf.data.cache import train_image_cache
    from iclf.engine.trainer import ensure_backbone_weights, prepare_data, resolve_paths

    cfg = resolve_paths(spec.trial_config({}, spec.seeds[0]))
    data = prepare_data(cfg)
    ensure_backbone_weights(cfg)
    train_image_cache(data, tuple(cfg.model.image_size), cfg.data.image_cache, cfg.data.root,
                      num_workers=os.cpu_count() or 1, progress=True)
    return str(getattr(data, "fingerprint", ""))


def _init_ray(address: str | None, num_cpus: int | None, *, quiet: bool = False) -> bool:
    """Start (or join) Ray; returns whether this call started it (and so should shut it down).
    ``quiet``: the driver's ``ray`` logger at WARNING (iclf's console: no "Started a local Ray
    instance" line, which could stand before a one-line error of the sweep's record)."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    level = logging.WARNING if quiet else logging.INFO
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=level)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # address="local": a new instance even when `ray start` left a cluster's address on this
        # machine (joining it would refuse num_cpus); --address is how to use a cluster.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                 include_dashboard=False, logging_level=level)
    return True


def _trial_resources(spec: AblationSpec) -> dict[str, float]:
    import ray

    gpus_available = ray.cluster_resources().get("GPU", 0)
    gpu = spec.resources.gpu
    if gpu == "auto":
        gpu = 1 if gpus_available > 0 else 0
    if gpu > 0 and gpus_available == 0:
        raise SweepError(f"{spec.path}: resources.gpu: {gpu} GPU per trial, but the Ray cluster has no "
                         f"GPU; set resources.gpu=0 (or auto)")
    cpus = ray.cluster_resources().get("CPU", 0)
    if spec.resources.cpu > cpus:
        raise SweepError(f"{spec.path}: resources.cpu: {spec.resources.cpu} CPUs per trial, but the "
                         f"Ray cluster has {cpus:g}")
    return {"cpu": float(spec.resources.cpu), "gpu": float(gpu)}


def _tuner_parts(spec: AblationSpec):
    """``(param_space, search_alg, scheduler, num_samples)`` for the spec's search and scheduler."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.name == "asha":
        scheduler = ASHAScheduler(time_attr=EPOCH, max_t=spec.max_epochs,
                                  grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    if spec.search.algorithm == "tpe":
        from ray.tune.search import Repeater
        from ray.tune.search.optuna import OptunaSearch

        # metric and mode here, not only in TuneConfig: Tune hands them to a searcher only with a
        # param_space, and this space is the searcher's own (define-by-run)
        search = OptunaSearch(space=define_by_run(spec), metric=OBJECTIVE, mode=spec.mode,
                              seed=spec.search.seed, study_name=spec.sweep_name)
        if len(spec.seeds) > 1:
            search = Repeater(search, repeat=len(spec.seeds), set_index=True)
        return None, search, scheduler, spec.num_samples * len(spec.seeds)
    if spec.search.algorithm == "grid" and not any(p.conditions for p in spec.space):
        # One grid axis per parameter: Ray's progress table then shows each as a column.
        params = {p.key: tune.grid_search(p.all_values()) for p in spec.space}
    else:  # conditional grids and random draws: the configurations, listed
        params = tune.grid_search(spec.configurations())
    space = {PARAMS: params, "seed": tune.grid_search(list(spec.seeds))}
    return space, None, scheduler, 1


def _trainable(ctx: TrialContext, resources: Mapping[str, float]):
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), dict(resources))


def _trial_label(trial) -> str:
    """A trial's name in Ray's progress table and its directory name: ``trial_<id>``."""
    return _trial_dirname(trial.trial_id)


def _runs_dir(sweep_dir: str | Path) -> Path:
    """Where the trials' run directories are (and the pool of spare states beside them)."""
    return Path(sweep_dir) / "runs"


def _trial_dirname(trial_id: str) -> str:
    return f"trial_{trial_id}"


# What finalize needs and the driver has not imported yet (SciPy's statistics, matplotlib; 1.5 s
# on a 2-core machine): loaded while the trials run, not after them.
_REPORT_MODULES = ("iclf.sweep.results", "iclf.analysis.report", "iclf.analysis.retrieval",
                   "iclf.tracking.reporter")


def _load_in_background(modules: tuple[str, ...]) -> None:
    """Import ``modules`` in a daemon thread; an import that fails there is left to fail again,
    with its traceback, where the module is used."""
    import importlib

    def load():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - see the docstring
                return

    threading.Thread(target=load, name="iclf-preload", daemon=True).start()


class _Background:
    """``fn()`` in a thread: :meth:`result` waits for it (Ctrl-C does not cut the wait short; it is
    remembered in :attr:`interrupted`) and returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Any]):
        self._value: Any = None
        self._error: BaseException | None = None
        self.interrupted = False
        self._thread = threading.Thread(target=self._run, args=(fn,), name="iclf-sweep-setup",
                                        daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._error = exc

    def result(self) -> Any:
        while self._thread.is_alive():
            try:
                self._thread.join()
            except KeyboardInterrupt:
                self.interrupted = True
        if self._error is not None:
            raise self._error
        return self._value


class _Timings(dict):
    """Seconds per phase of the driver: ``with timings("fit_s"): ...``."""

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = time.perf_counter() - t0


def run_sweep(spec: AblationSpec, *, address: str | None = None, resume: bool = False,
              num_cpus: int | None = None, epoch_hook: Callable[[int, str], None] | None = None,
              verbose: int = 1, plan=None) -> SweepOutcome:
    """Run (or with ``resume``, continue) the sweep of ``spec``; see the module docstring.

    The driver holds the sweep's lease (:mod:`iclf.sweep.lease`) throughout. Ctrl-C or SIGTERM
    stops the trials, leaves the parent run RUNNING (tag ``iclf.state=interrupted``) with the
    unfinished child runs marked ``interrupted``, writes no report, and returns an outcome whose
    ``interrupted`` is true; ``resume`` continues from there. ``plan``: an
    :class:`iclf.sweep.plan.SweepPlan` whose projection is logged (else one from the tracking
    store's history).
    """
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from iclf.tracking import mlflow as tracking
    from iclf.tracking.credentials import Credentials

    t_start = time.perf_counter()
    timings = _Timings()
    paths = sweep_paths(spec)
    with _interrupt_on_sigterm(), lease.acquire(paths.sweep_dir, on_lost=_lost_lease):
        state = _check_start(spec, paths, resume)
        restart = resume and not tune.Tuner.can_restore(str(paths.sweep_dir))
        with timings("prepare_s"):
            fingerprint = prepare_shared_inputs(spec)

        def open_record():
            from iclf.sweep.plan import announce

            with timings("mlflow_setup_s"):
                client = tracking.connect(paths.tracking_uri)
                record = _resume_record(client, state) if resume else \
                    _open_record(client, spec, paths, fingerprint, address)
            with timings("plan_s"):
                announce(spec, client, record.parent_run_id, resume=resume, plan=plan)
            return client, record

        # Ray starts while the tracking store opens the sweep's record (a new database creates its
        # tables): two waits of seconds each, side by side. Whatever happens to one, the other is
        # waited for before anything else (no record is left half-written behind the lease).
        opening = _Background(open_record)
        started_ray = False
        interrupted = False
        try:
            try:
                try:
                    with timings("ray_init_s"):
                        started_ray = _init_ray(address, num_cpus, quiet=verbose < 2)
                    _take_sigterm()
                finally:  # the record's error, if any, wins: no trial ran
                    client, record = opening.result()
                if opening.interrupted:  # Ctrl-C while the record was being opened
                    raise KeyboardInterrupt
                ctx = TrialContext(spec=spec, tracking_uri=record.tracking_uri,
                                   experiment_id=record.experiment_id,
                                   parent_run_id=record.parent_run_id,
                                   sweep_dir=str(paths.sweep_dir),
                                   tags=_child_tags(client, spec, record),
                                   credentials=Credentials.from_env(), epoch_hook=epoch_hook)
                resources = _trial_resources(spec)
                if restart:
                    _restart_trials(client, record, paths.sweep_dir)
                _load_in_background(_REPORT_MODULES)
                with timings("fit_s"):
                    build_tuner(spec, ctx, resources, paths, resume=resume and not restart,
                                verbose=verbose).fit()
                # Tune returns early, its trials stopped, when Ctrl-C reached it: the sweep is
                # complete only when every planned trial ended (MLflow knows; Tune's results call
                # the stopped trials TERMINATED).
                interrupted = not count_outcomes(client, record, spec.num_trials()).completed
                if not interrupted:
                    with timings("test_eval_s"):
                        evaluate_stopped_trials(client, record, resources)
            finally:
                if started_ray:
                    import ray

                    ray.shutdown()
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's loop
            interrupted = True
        outcome = count_outcomes(client, record, spec.num_trials(), sweep=spec.sweep_name,
                                 sweep_dir=paths.sweep_dir, timings=timings)
        if interrupted:
            mark_interrupted(client, record, outcome)
            outcome.interrupted = True
            return outcome
        with timings("finalize_s"):
            outcome.report = finalize(spec, client, record, paths.sweep_dir, outcome)
    timings["total_s"] = time.perf_counter() - t_start
    return outcome


def _sigterm_as_sigint(signum, frame) -> None:
    signal.raise_signal(signal.SIGINT)


def _take_sigterm() -> None:
    """SIGTERM to the driver is Ctrl-C: it raises the SIGINT handler in force (Tune's, which stops
    the trials and returns, while ``fit`` runs; Python's KeyboardInterrupt otherwise). Set again
    after ``ray.init``, whose core worker installs its own SIGTERM handler (which aborts)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_sigint)


@contextlib.contextmanager
def _interrupt_on_sigterm():
    """:func:`_take_sigterm` for the duration of the block; the previous handler after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _take_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _lost_lease(message: str) -> None:
    """Another driver took the sweep over (this one stalled past the lease's timeout): stop."""
    print(f"[iclf] {message}: stopping this driver", file=sys.stderr, flush=True)
    signal.raise_signal(signal.SIGINT)


def count_outcomes(client, record, planned: int | None, **fields: Any) -> SweepOutcome:
    """The sweep's trial outcomes from its child runs: FINISHED and FAILED ones, of ``planned``."""
    from iclf.tracking.mlflow import child_runs

    statuses = [r.info.status for r in child_runs(client, record.experiment_id,
                                                  record.parent_run_id)]
    return SweepOutcome(fields.pop("sweep", ""), fields.pop("sweep_dir", Path()),
                        record.tracking_uri, record.experiment_id, record.parent_run_id,
                        trials=max(planned or 0, len(statuses)),
                        finished=statuses.count("FINISHED"), failed=statuses.count("FAILED"),
                        **fields)


def mark_interrupted(client, record, outcome: SweepOutcome) -> None:
    """An interrupted sweep: child runs that had not ended become KILLED with ``interrupted=true``
    (``--resume`` reopens them and drops the mark); the parent stays RUNNING, labelled."""
    from iclf.tracking.mlflow import child_runs, close_run

    for r in child_runs(client, record.experiment_id, record.parent_run_id):
        if r.info.status not in ("FINISHED", "FAILED"):
            close_run(client, r.info.run_id, "KILLED", {INTERRUPTED_TAG: "true"})
    client.log_batch(record.parent_run_id, tags=[
        _tag(STATE_TAG, "interrupted"), _tag("trials_finished", outcome.finished),
        _tag("trials_failed", outcome.failed), _tag("trials_planned", outcome.trials)])


def _tag(key: str, value: Any):
    from mlflow.entities import RunTag

    return RunTag(key, str(value))


def _check_start(spec: AblationSpec, paths: SweepPaths, resume: bool) -> dict[str, Any] | None:
    """The sweep's state when it may start (fresh) or resume; SweepError saying what to do else."""
    state = read_state(paths.sweep_dir)
    sweep_dir = paths.sweep_dir
    if resume:
        # A state without Tune's experiment state: interrupted after its record opened, before
        # Tune saved anything; --resume starts the trials again (_restart_trials)
        if state is None:
            raise SweepError(f"nothing to resume at {sweep_dir}: start the sweep without --resume")
        if state.get("spec_hash") != spec.hash:
            raise SweepError(f"{spec.path} (with its overrides) is not the spec the sweep at "
                             f"{sweep_dir} started with; run it under another name (name=...) or "
                             f"resume with the same spec and overrides")
    elif sweep_dir.exists() and (state is not None or tune.Tuner.can_restore(str(sweep_dir))):
        raise SweepError(f"a sweep already exists at {sweep_dir}: pass --resume to continue it, or "
                         f"give this one another name (name=...) or storage_path")
    return state


def _open_record(client, spec: AblationSpec, paths: SweepPaths, fingerprint: str,
                 address: str | None):
    """A new sweep's MLflow record (experiment, parent run with its provenance tags and the spec)
    and its state file."""
    from iclf.tracking import mlflow as tracking

    provenance = {**tracking.git_state(Path(__file__)), **tracking.package_versions()}
    tags = {STATE_TAG: "running", "spec_file": str(spec.path.resolve()),
            "spec_sha256": spec.file_hash,
            "spec_resolved_sha256": spec.hash, "variant": spec.variant or "",
            "smoke": str(spec.smoke).lower(), "dataset_fingerprint": fingerprint,
            STORAGE_TAG: str(paths.sweep_dir), "search": spec.search.algorithm,
            "scheduler": spec.scheduler.name, METRIC_TAG: spec.metric, MODE_TAG: spec.mode,
            "seeds": json.dumps(list(spec.seeds)), "trials_planned": spec.num_trials(),
            "ray_address": address or "local", **provenance}
    paths.sweep_dir.mkdir(parents=True, exist_ok=True)
    resolved = paths.sweep_dir / "spec.resolved.json"
    resolved.write_text(json.dumps(spec.resolved, indent=1, default=str))
    record = tracking.open_sweep(client, experiment=spec.tracking.experiment or spec.sweep_name,
                                 sweep=spec.sweep_name, tags=tags,
                                 artifacts=[spec.path, resolved], params=spec.param_keys,
                                 metric=spec.metric, mode=spec.mode)
    write_state(paths.sweep_dir, {
        "sweep": spec.sweep_name, "spec_file": str(spec.path.resolve()), "spec_hash": spec.hash,
        "tracking_uri": record.tracking_uri, "experiment_id": record.experiment_id,
        "parent_run_id": record.parent_run_id})
    return record


def _resume_record(client, state: Mapping[str, Any]):
    """The record of the sweep being resumed, its parent run reopened."""
    from iclf.tracking import mlflow as tracking

    record = tracking.SweepRecord(state["tracking_uri"], state["experiment_id"],
                                  state["parent_run_id"])
    tracking.resume_sweep(client, record)
    client.set_tag(record.parent_run_id, STATE_TAG, "running")
    return record


def _restart_trials(client, record, sweep_dir: Path) -> None:
    """``--resume`` of a sweep whose driver stopped after its record opened but before Tune saved
    any experiment state: Tune cannot restore its trials, so all of them start again, under new
    trial ids. Child runs an earlier driver opened (a trial cut short before that first save) are
    deleted, and their trial directories removed, so that no trial is counted twice."""
    from iclf.tracking.mlflow import child_runs

    runs = child_runs(client, record.experiment_id, record.parent_run_id)
    for run in runs:
        client.delete_run(run.info.run_id)
    for path in sweep_dir.glob("trial_*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    print(f"[iclf] no trial state was saved before the sweep stopped: its trials start again"
          + (f" (the {len(runs)} child run(s) of the earlier start deleted)" if runs else ""),
          flush=True)


def _child_tags(client, spec: AblationSpec, record) -> dict[str, str]:
    """Tags every trial run carries: the sweep's name and the git SHA its parent recorded."""
    sha = client.get_run(record.parent_run_id).data.tags.get("git_sha", "unknown")
    return {SWEEP_TAG: spec.sweep_name, "git_sha": sha}


def build_tuner(spec: AblationSpec, ctx: TrialContext, resources: Mapping[str, float],
                paths: SweepPaths, *, resume: bool = False, verbose: int = 1) -> tune.Tuner:
    """The Tune experiment of ``spec`` (restored from its directory with ``resume``).

    ``verbose``: 0 prints nothing, 1 iclf's trial table (:mod:`iclf.sweep.progress`), 2 Ray's own
    output (TensorBoard hint, checkpoint messages)."""
    from iclf.sweep.progress import TrialTable, use_trial_table

    ctx = dataclasses.replace(ctx, verbose=verbose)
    trainable = _trainable(ctx, resources)
    use_trial_table(verbose == 1)
    if resume:
        # Tune reapplies the stored RunConfig; the table is iclf's console, not experiment state
        return tune.Tuner.restore(str(paths.sweep_dir), trainable=trainable,
                                  resume_unfinished=True, resume_errored=True)
    table = TrialTable(spec.param_keys, spec.metric, spec.mode, spec.max_epochs,
                       params_of=lambda config: trial_params(spec, config),
                       seed_of=lambda config: trial_seed(spec, config)) if verbose == 1 else None
    if spec.search.algorithm == "tpe" and verbose < 2:
        import optuna  # "A new study created in memory" (OptunaSearch's start) with --verbose only

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, search, scheduler, num_samples = _tuner_parts(spec)
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode=spec.mode, search_alg=search, scheduler=scheduler,
            num_samples=num_samples, max_concurrent_trials=spec.max_concurrent_trials,
            # A finished trial's worker process runs the next trial: no new process, no second
            # import of torch/iclf/MLflow (the demo sweep: 256 s -> 173 s). Safe because a trial
            # keeps no state outside run_trial and logs through its own MlflowClient run id,
            # never MLflow's process-global active run.
            reuse_actors=True,
            trial_name_creator=_trial_label, trial_dirname_creator=_trial_label),
        run_config=tune.RunConfig(
            name=spec.sweep_name, storage_path=str(paths.storage),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[CloseRuns(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id,
                                 spec.max_epochs,
                                 # two states per running trial: its first epochs' writes
                                 spare_limit=2 * (spec.max_concurrent_trials or 2))],
            progress_reporter=table, verbose=min(verbose, 2)))


def finalize(spec: AblationSpec, client, record, sweep_dir: Path,
             outcome: SweepOutcome) -> list[str]:
    """Close a completed sweep: child runs still RUNNING become KILLED, the analysis report is
    written and logged to the parent run, the parent run is FINISHED. Returns the report's files."""
    from iclf.tracking import mlflow as tracking

    from iclf.sweep.plan import log_actual

    kill_unfinished_runs(client, record.experiment_id, record.parent_run_id)
    log_actual(client, record.experiment_id, record.parent_run_id)
    report = write_analysis(spec, record.tracking_uri, record.parent_run_id, sweep_dir, client)
    tracking.close_sweep(client, record, "FINISHED", {
        STATE_TAG: "finished", "trials_finished": outcome.finished,
        "trials_failed": outcome.failed, "trials_planned": outcome.trials})
    release_finished_trials(client, record, sweep_dir)
    return report


def release_finished_trials(client, record, sweep_dir: Path) -> None:
    """Every FINISHED trial of the sweep keeps only its selected weights, config and metrics
    (:func:`iclf.sweep.cleanup.release_finished`): after fit and the test evaluation of stopped
    trials, no process of theirs is left to write, and nothing can need their states."""
    from iclf.names import TRIAL_TAG
    from iclf.sweep import cleanup, spares
    from iclf.tracking.mlflow import child_runs

    try:
        runs = child_runs(client, record.experiment_id, record.parent_run_id)
        cleanup.release_finished(runs, lambda trial_id: sweep_dir / _trial_dirname(trial_id),
                                 TRIAL_TAG, RUN_DIR_TAG)
        spares.clear(_runs_dir(sweep_dir) / spares.POOL_DIR)
    except OSError as exc:  # disk use is not a result: say it, go on
        print(f"[iclf] finished trials' checkpoints stay on disk ({exc})", file=sys.stderr)


def _evaluate_and_log(run_dir: str, tracking_uri: str, run_id: str, step: int,
                      credentials=None) -> dict[str, float]:
    """Test metrics of a run's selected checkpoint, logged once (a Ray task on a trial's resources)."""
    from iclf.engine import evaluate_run
    from iclf.tracking.mlflow import RunLogger, connect

    if credentials:
        credentials.apply()
    test = evaluate_run(run_dir, which="best", split="test")
    logger = RunLogger(connect(tracking_uri), run_id)
    logger.log_once({f"test/{k}": v for k, v in test.items()}, step=step)
    log_weights(logger, Path(run_dir))
    log_retrieval(logger, Path(run_dir))
    return test


def evaluate_stopped_trials(client, record, resources: Mapping[str, float]) -> int:
    """Evaluate on test the selected checkpoint of every FINISHED child run that has no test metrics
    (trials ASHA stopped), in parallel Ray tasks with the trials' resources; returns how many."""
    import ray

    from iclf.tracking.mlflow import child_runs

    todo = [r for r in child_runs(client, record.experiment_id, record.parent_run_id)
            if r.info.status == "FINISHED" and "test/R1" not in r.data.metrics
            and RUN_DIR_TAG in r.data.tags]
    if not todo:
        return 0
    task = ray.remote(_evaluate_and_log).options(num_cpus=resources["cpu"],
                                                 num_gpus=resources["gpu"], max_retries=1)
    from iclf.tracking.credentials import Credentials

    refs = [task.remote(r.data.tags[RUN_DIR_TAG], client.tracking_uri, r.info.run_id,
                        int(r.data.metrics.get(EPOCH, 0)), Credentials.from_env()) for r in todo]
    ray.get(refs)
    return len(refs)


def kill_unfinished_runs(client, experiment_id: str, parent_run_id: str) -> int:
    """At the end of a completed sweep, close child runs still RUNNING as KILLED."""
    from iclf.tracking.mlflow import child_runs, close_run

    n = 0
    for r in child_runs(client, experiment_id, parent_run_id):
        if r.info.status == "RUNNING":
            close_run(client, r.info.run_id, "KILLED", {"killed_reason": "sweep ended"})
            n += 1
    return n


def write_analysis(spec: AblationSpec, uri: str, parent_run_id: str, sweep_dir: Path,
                   client) -> list[str]:
    """Write the analysis report (:func:`iclf.analysis.write_report`) and log it to the parent run;
    returns the paths."""
    from iclf.sweep.results import write_sweep_report
    from iclf.tracking.mlflow import load_sweep_frames
    from iclf.tracking.reporter import load_retrieval

    trials, curves = load_sweep_frames(uri, parent_run_id)
    out = sweep_dir / "report"
    written = write_sweep_report(trials, curves, out, baseline=dict(spec.baseline) or None,
                                 metric=spec.metric, mode=spec.mode,
                                 retrieval=lambda run_id: load_retrieval(client, run_id))
    if written is None:  # no trial finished: nothing to summarise
        return []
    client.log_artifacts(parent_run_id, str(out), "report")
    return [str(p) for p in written.values()]


__all__ = ["TrialContext", "TuneReporter", "CloseRuns", "SweepOutcome", "SweepError", "run_trial",
           "run_sweep", "build_tuner", "finalize", "prepare_shared_inputs", "evaluate_stopped_trials",
           "kill_unfinished_runs", "write_analysis"]
