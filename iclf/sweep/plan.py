"""The plan of a sweep before it runs (``iclf sweep SPEC --dry-run``), and its projected cost.

:func:`make_plan` lists the trials (configuration x seed; for TPE the search space and how many
trials it draws), the resources one trial takes and how many run at once on this machine (its CPUs
and GPUs, read without starting Ray), and projects the device-hours of the whole sweep from a
measured time per epoch, taken from

* the same configuration's earlier runs in the spec's tracking store (:func:`history_times`):
  FINISHED runs whose logged config equals the trial's in every key that can change the time of an
  epoch (all but :data:`NOT_TIMING`), on the same kind of device; their ``device_seconds``
  (training, every evaluation, the final test evaluation) over their epochs, averaged;
* or ``--measure`` (:func:`measure_epoch_times`): a few timed training steps of each configuration
  without earlier runs (for TPE, which draws its configurations while it runs, of the base
  configuration) through the engine (:func:`iclf.engine.trainer.setup`, ``train_step``, data
  loading included) and the evaluation of a slice of its validation and test splits, scaled to
  their sizes.

A trial costs its epochs x the time per epoch (plus the final test evaluations when measured
apart); the sweep's device-hours are the sum over its trials, the figure ``iclf summary`` reports
as its cost once it ran. Under ASHA the projection is an upper bound (every trial to the last epoch).
Trials packed per GPU (``resources.gpu`` 0.5, 0.25) cost their time x that share: the history is
read at the same share only, and a measurement, which times one trial with the GPU to itself, says
so.

Nothing here imports Ray or Optuna, and nothing is written: the history is read from a snapshot of
the SQLite database taken read-only into a temporary directory (a missing database is no history),
and a measurement builds what is not there yet (synthetic data, the tiny backbone) in a temporary
directory that it removes. :func:`announce` and :func:`log_actual` are the sweep driver's hooks: the
projection printed and logged to the parent run when a sweep starts, the actual device-hours next
to it when it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from iclf.config import ExperimentConfig
from iclf.names import DEVICE_SHARE_TAG, EPOCH, PARAM_PREFIX, device_share, run_device_seconds
from iclf.sweep.spec import AblationSpec, Param, config_key

#: Config keys that do not change how long an epoch takes: which run it is, where it reads and
#: writes, and how many epochs it has (the projection is per epoch).
NOT_TIMING = ("name", "output_dir", "seed", "training.epochs", "data.root", "model.pretrained",
              "model.init_from")
#: Parent-run metrics and tags of the projection and of what the sweep then cost.
PROJECTED_METRIC = "projected_device_hours"
ACTUAL_METRIC = "device_hours"
PROJECTION_TAG = "projection"

Signature = tuple[tuple[str, str], ...]


# ------------------------------------------------------------------------------------- pieces


@dataclass(frozen=True)
class EpochTime:
    """Device seconds per epoch (training and its evaluations), plus those spent once per trial
    (the final test evaluations) when they were measured apart; where the figure comes from."""

    seconds: float
    once: float = 0.0
    source: str = ""

    def trial_seconds(self, epochs: int) -> float:
        return epochs * self.seconds + self.once


@dataclass(frozen=True)
class PlannedTrial:
    key: str          # config_key: the configuration without its seed ("" = the base config)
    seed: int
    epochs: int
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Machine:
    """What this machine offers the sweep: CPUs (Ray's default) and visible CUDA devices."""

    cpus: int
    gpus: int

    @classmethod
    def here(cls, num_cpus: int | None = None) -> "Machine":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(cpus=int(num_cpus or os.cpu_count() or 1), gpus=int(gpus))


@dataclass(frozen=True)
class Projection:
    """The projected device-hours of a sweep (None: unknown) and how it was reached."""

    device_hours: float | None
    covered: int                 # trials with a time per epoch
    trials: int
    sources: tuple[str, ...] = ()
    upper_bound: bool = False    # ASHA: every trial counted to its last epoch
    note: str = ""               # why it is unknown or partial

    @property
    def complete(self) -> bool:
        return self.device_hours is not None and self.covered == self.trials

    def line(self) -> str:
        if self.device_hours is None:
            return f"projected device-hours: unknown ({self.note})"
        sources = "; ".join(self.sources)
        if not self.complete:
            detail = f"{self.covered} of {self.trials} trials have a time per epoch: {sources}"
            return (f"projected device-hours: at least {self.device_hours:.3g} ({detail}"
                    + (f"; {self.note})" if self.note else ")"))
        if self.upper_bound:
            return (f"projected device-hours: at most {self.device_hours:.3g} ({sources}; every "
                    f"trial to its last epoch, ASHA stops some earlier)")
        return f"projected device-hours: {self.device_hours:.3g} ({sources})"

    def tag(self) -> str:
        return self.line().split(": ", 1)[1]


def _device_type(cfg: ExperimentConfig, gpu: float) -> str:
    """The kind of device a trial trains on: cuda with a GPU share, else what the config names."""
    if gpu > 0:
        return "cuda"
    return "cpu" if cfg.device in ("auto", "cpu") else cfg.device.split(":")[0]


def trial_gpu(spec: AblationSpec, machine: Machine) -> float:
    """GPUs per trial: ``auto`` = 1 when this machine has GPUs, else 0."""
    gpu = spec.resources.gpu
    if gpu == "auto":
        return 1.0 if machine.gpus > 0 else 0.0
    return float(gpu)


def concurrency(spec: AblationSpec, machine: Machine, gpu: float,
                trials: int) -> tuple[int, str]:
    """How many trials run at once on ``machine`` and what limits it."""
    limits = {"CPUs": math.floor(machine.cpus / float(spec.resources.cpu) + 1e-9)}
    if gpu > 0:
        limits["GPUs"] = math.floor(machine.gpus / gpu + 1e-9)
    if spec.max_concurrent_trials:
        limits["max_concurrent_trials"] = int(spec.max_concurrent_trials)
    limits["trials"] = trials
    which = min(limits, key=lambda k: limits[k])
    return limits[which], which


# --------------------------------------------------------------------------------- the plan


@dataclass
class SweepPlan:
    """What :func:`make_plan` found; :meth:`describe` is what ``--dry-run`` prints."""

    spec: AblationSpec
    machine: Machine
    cpu: float
    gpu: float
    trials: list[PlannedTrial]          # every trial; empty for TPE (drawn while it runs)
    num_trials: int
    concurrent: int
    limited_by: str
    device: str                         # cpu | cuda: the device kind a trial trains on
    times: dict[str, EpochTime] = field(default_factory=dict)  # per config_key, from history
    measured: dict[str, EpochTime] = field(default_factory=dict)  # per config_key (--measure)
    base: EpochTime | None = None       # the base configuration's (--measure, TPE)
    history_note: str = ""

    @property
    def share(self) -> float:
        """The share of its GPU a trial holds (``resources.gpu`` below 1: trials packed per GPU);
        1 for a trial with a GPU to itself or on the CPU. A trial costs its time x this."""
        return self.gpu if 0 < self.gpu < 1 else 1.0

    def time_of(self, key: str) -> EpochTime | None:
        return self.times.get(key) or self.measured.get(key) or self.base

    def origin(self, key: str) -> str:
        return "earlier runs" if key in self.times else "measured" if key in self.measured \
            else "base config, measured"

    def projection(self) -> Projection:
        spec = self.spec
        asha = spec.scheduler.name == "asha"
        if not self.trials:  # tpe: every trial from the base configuration
            if self.base is None:
                return Projection(None, 0, self.num_trials, note=self._unknown())
            hours = self.num_trials * self.base.trial_seconds(spec.max_epochs) / 3600
            return Projection(hours, self.num_trials, self.num_trials,
                              (f"every trial at {self.base.seconds:.3g} s per epoch, "
                               f"{self.base.source}{self._alone()}",), upper_bound=asha)
        seconds, covered, sources = 0.0, 0, []
        for t in self.trials:
            et = self.time_of(t.key)
            if et is not None:
                seconds += et.trial_seconds(t.epochs)
                covered += 1
        if covered == 0:
            return Projection(None, 0, len(self.trials), note=self._unknown())
        n_hist = sum(1 for t in self.trials if t.key in self.times)
        measured = [t.key for t in self.trials if t.key not in self.times and t.key in self.measured]
        n_meas = len(measured)
        if n_hist:
            sources.append(f"{n_hist} trials from earlier runs of their configuration")
        if n_meas:
            configs = len(set(measured))
            sources.append(f"{n_meas} from {configs} configuration{'s' if configs != 1 else ''} "
                           f"measured here{self._alone()}")
        if covered > n_hist + n_meas:
            sources.append(f"{covered - n_hist - n_meas} from the base configuration, "
                           f"{self.base.source}{self._alone()}")
        note = "" if covered == len(self.trials) else "--measure times the configurations " \
                                                      "without earlier runs"
        return Projection(seconds / 3600, covered, len(self.trials), tuple(sources),
                          upper_bound=asha, note=note)

    def _alone(self) -> str:
        """What a measurement cannot know of packed trials: it timed one with the GPU to itself."""
        if self.share == 1.0:
            return ""
        return (f" with the GPU to itself: at {self.gpu:g} GPU per trial they cost less if "
                f"packing pays, more if it does not")

    def _unknown(self) -> str:
        what = "the base configuration" if not self.trials else "each configuration"
        return (f"{self.history_note or 'no earlier run of these configurations'}; --measure "
                f"times a few training steps of {what}")

    def describe(self) -> list[str]:
        spec = self.spec
        lines = [f"sweep {spec.sweep_name} ({spec.path}): {self.num_trials} trials, "
                 f"{spec.search.algorithm} search, {spec.scheduler.name} scheduler, metric "
                 f"{spec.metric} ({spec.mode})"]
        if self.trials:
            configs: dict[str, list[PlannedTrial]] = {}
            for t in self.trials:
                configs.setdefault(t.key, []).append(t)
            lines.append(f"trials: {len(configs)} configurations x {len(spec.seeds)} seeds "
                         f"{list(spec.seeds)}")
            width = max(len(k or "(base)") for k in configs)
            for key, ts in configs.items():
                et = self.time_of(key)
                epochs = sorted({t.epochs for t in ts})
                cost = ""
                if et is not None:
                    hours = sum(et.trial_seconds(t.epochs) for t in ts) / 3600
                    cost = f"  {et.seconds:.3g} s per epoch ({self.origin(key)}), " \
                           f"{hours:.3g} device-h"
                lines.append(f"  {key or '(base)':<{width}}  seeds {','.join(str(t.seed) for t in ts)}"
                             f"  {'/'.join(map(str, epochs))} epochs{cost}")
        else:
            lines.append(f"search space (drawn by {spec.search.algorithm}: {spec.num_samples} "
                         f"samples x {len(spec.seeds)} seeds {list(spec.seeds)} = "
                         f"{self.num_trials} trials of {spec.max_epochs} epochs):")
            width = max(len(p.key) for p in spec.space)
            for p in spec.space:
                lines.append(f"  {p.key:<{width}}  {describe_param(p)}")
        gpu_text = f"{self.gpu:g} GPU"
        if spec.resources.gpu == "auto":
            gpu_text += " (gpu: auto, 1 where there are GPUs)" if self.gpu == 0 else " (gpu: auto)"
        lines.append(f"resources per trial: {spec.resources.cpu:g} CPU, {gpu_text}; here "
                     f"{self.machine.cpus} CPUs, {self.machine.gpus} GPUs: {self.concurrent} "
                     f"trial{'s' if self.concurrent != 1 else ''} at once (limited by "
                     f"{self.limited_by})")
        if self.share < 1:
            lines.append(f"  device seconds: a trial's time x its {self.share:g} GPU (the trials "
                         f"packed on one GPU share its hours)")
        if self.gpu > 0 and self.machine.gpus == 0:
            lines.append("  this machine has no GPU: the sweep would refuse to start here; run it "
                         "where the GPUs are (--address for a Ray cluster) or set resources.gpu=0")
        p = self.projection()
        lines.append(p.line())
        if p.complete and self.concurrent > 0:
            wall = p.device_hours / (self.concurrent * self.share)
            lines.append(f"  about {wall:.3g} h of wall time here at "
                         f"{self.concurrent} at once, if the trials take equally long "
                         f"({self.device} trials)")
        if self.history_note and self.times:
            lines.append(f"  history: {self.history_note}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        p = self.projection()
        return {"sweep": self.spec.sweep_name, "trials": self.num_trials,
                "configurations": [{"key": t.key, "seed": t.seed, "epochs": t.epochs}
                                   for t in self.trials],
                "resources": {"cpu": self.spec.resources.cpu, "gpu": self.gpu},
                "machine": dataclasses.asdict(self.machine), "concurrent": self.concurrent,
                "limited_by": self.limited_by, "device": self.device,
                "projected_device_hours": p.device_hours, "covered": p.covered,
                "projection": p.line()}


def describe_param(p: Param) -> str:
    if p.kind in ("grid", "choice"):
        text = f"{p.kind} {list(p.values)}"
    else:
        text = f"{p.kind} [{p.low:g}, {p.high:g}]" + (" log" if p.log else "")
    if p.conditions:
        text += "  if " + ", ".join(c.describe() for c in p.conditions)
    return text


def planned_trials(spec: AblationSpec) -> list[PlannedTrial]:
    """Every trial of a grid or random search, in the order Tune runs them; [] for TPE."""
    if spec.search.algorithm == "tpe":
        return []
    out = []
    for params in spec.configurations():
        for seed in spec.seeds:
            cfg = spec.trial_config(params, seed)
            out.append(PlannedTrial(config_key(params), int(seed), int(cfg.training.epochs),
                                    dict(params)))
    return out


def make_plan(spec: AblationSpec, *, machine: Machine | None = None, history: bool = True,
              measure: bool = False, tracking_uri: str | None = None,
              say: Callable[[str], None] | None = None) -> SweepPlan:
    """The plan of ``spec`` on ``machine`` (this one by default), its epoch times from the tracking
    store's history and, with ``measure``, from timed steps of each configuration the history does
    not cover (of the base configuration for TPE)."""
    from iclf.sweep.storage import sweep_paths

    machine = machine or Machine.here()
    trials = planned_trials(spec)
    num = spec.num_trials() or 0
    gpu = trial_gpu(spec, machine)
    concurrent, limited_by = concurrency(spec, machine, gpu, num)
    base_cfg = spec.trial_config({}, spec.seeds[0])
    device = _device_type(base_cfg, gpu)
    plan = SweepPlan(spec=spec, machine=machine, cpu=float(spec.resources.cpu), gpu=gpu,
                     trials=trials, num_trials=num, concurrent=concurrent, limited_by=limited_by,
                     device=device)
    uri = tracking_uri or sweep_paths(spec).tracking_uri
    if history and trials:
        plan.times, plan.history_note = history_times(spec, trials, uri, device, plan.share)
    elif history:
        plan.history_note = "tpe draws its configurations while it runs"
    if measure:
        threads = max(1, int(spec.resources.cpu)) if device == "cpu" else None
        if trials:
            todo = {t.key: t.params for t in trials if t.key not in plan.times}
            cfgs = {key: spec.trial_config(params, spec.seeds[0]) for key, params in todo.items()}
            plan.measured = measure_epoch_times(cfgs, threads=threads, say=say)
        else:
            plan.base = measure_epoch_times({"": base_cfg}, threads=threads, say=say)[""]
    return plan


# ------------------------------------------------------------------------------------ history


def _signature(params: Mapping[str, str]) -> Signature:
    return tuple(sorted((k, v) for k, v in params.items()
                        if k not in NOT_TIMING and not k.startswith(PARAM_PREFIX)))


def config_signature(cfg: ExperimentConfig) -> Signature:
    """A trial config as its MLflow params read (the engine logs the resolved config, flattened),
    without the keys that cannot change the time of an epoch."""
    from iclf.config import flatten, to_dict
    from iclf.engine.trainer import resolve_paths
    from iclf.tracking.mlflow import string_params

    return _signature(string_params(flatten(to_dict(resolve_paths(cfg)))))


@contextlib.contextmanager
def read_only_client(uri: str) -> Iterator[Any]:
    """An MlflowClient that cannot change the store: a SQLite database is copied (SQLite's backup
    of a read-only connection: a consistent snapshot) into a temporary directory and read there;
    other stores are only searched. Yields None when the SQLite file does not exist."""
    from iclf.tracking.uri import sqlite_path

    path = sqlite_path(uri)
    if path is None:
        from mlflow import MlflowClient

        yield MlflowClient(uri)
        return
    if not path.is_file():
        yield None
        return
    import sqlite3

    from mlflow import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="iclf-plan-"))
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        dst = sqlite3.connect(tmp / "history.db")
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        yield MlflowClient(f"sqlite:///{tmp / 'history.db'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finished_runs(client) -> list[Any]:
    """Every FINISHED run of every experiment in the store."""
    ids = [e.experiment_id for e in client.search_experiments()]
    out: list[Any] = []
    token = None
    while ids:
        page = client.search_runs(ids, filter_string="attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            break
    return out


def history_times(spec: AblationSpec, trials: list[PlannedTrial], uri: str, device: str,
                  share: float = 1.0) -> tuple[dict[str, EpochTime], str]:
    """``{config_key: EpochTime}`` from the FINISHED runs in ``uri`` of the same configurations on
    the same kind of device, held at the same ``share`` of it (trials packed per GPU run slower,
    and cost their time x their share), and a note on what was searched."""
    from iclf.tracking.store import redact

    wanted: dict[Signature, list[str]] = {}  # configurations differing only in NOT_TIMING keys
    seen: set[str] = set()                   # share one signature
    for t in trials:
        if t.key not in seen:
            seen.add(t.key)
            wanted.setdefault(config_signature(spec.trial_config(t.params, t.seed)), []).append(t.key)
    per_epoch: dict[str, list[float]] = {}
    try:
        with read_only_client(uri) as client:
            if client is None:
                return {}, f"no tracking database yet at {redact(uri)}"
            runs = finished_runs(client)
    except Exception as exc:  # noqa: BLE001 - a store we cannot read is no history, said so
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {}, f"could not read {redact(uri)}: {first[:200]}"
    for run in runs:
        metrics = run.data.metrics
        epochs = int(metrics.get(EPOCH, 0))
        seconds = metrics.get("device_seconds")
        kind = run.data.tags.get("device", "").split(":")[0]
        if epochs < 1 or not seconds or seconds <= 0 or kind != device:
            continue
        if abs(device_share(run.data.tags.get(DEVICE_SHARE_TAG)) - share) > 1e-9:
            continue
        for key in wanted.get(_signature(run.data.params), ()):
            per_epoch.setdefault(key, []).append(float(seconds) * share / epochs)
    times = {k: EpochTime(statistics.fmean(v), 0.0, f"mean of {len(v)} earlier "
                                                    f"run{'s' if len(v) != 1 else ''}")
             for k, v in per_epoch.items()}
    found = sum(len(v) for v in per_epoch.values())
    at = f" at {share:g} {device} per trial" if share != 1.0 else ""
    note = (f"{found} earlier {device} runs{at} of {len(times)} of the {len(seen)} "
            f"configurations in {redact(uri)}" if times else
            f"no earlier {device} run{at} of these configurations in {redact(uri)}")
    return times, note


# ---------------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sandboxed(cfg: ExperimentConfig, tmp: Path, say: Callable[[str], None]) -> ExperimentConfig:
    """``cfg`` writing only under ``tmp``: outputs there; synthetic data and the tiny backbone
    built there when they are not built yet; the decoded-image cache read where it is (through a
    link in ``tmp``, so that its lock file goes there too), or decoding when there is none yet."""
    from iclf.data.cache import cache_dir_for, cache_file
    from iclf.engine.prepare import MARKER

    d, m = cfg.data, cfg.model
    data = dataclasses.replace(d)
    if d.synthetic is not None:
        s = d.synthetic
        marker = Path(d.root) / d.dataset / MARKER
        wanted = {"dataset": d.dataset, "ids": s.ids, "images_per_id": s.images_per_id,
                  "seed": s.seed}
        if marker.is_file() and json.loads(marker.read_text()) == wanted:
            data = dataclasses.replace(data, synthetic=None)  # there: read it, no lock taken
        elif not (Path(d.root) / d.dataset).exists():
            data = dataclasses.replace(data, root=str(tmp / "data"))
            if not (tmp / "data" / d.dataset / MARKER).is_file():  # not by an earlier config
                say(f"measure: the synthetic dataset is not built yet: generating it in {tmp}")
    model = m
    if m.build_pretrained and m.pretrained and not Path(m.pretrained).is_file():
        model = dataclasses.replace(m, pretrained=str(tmp / Path(m.pretrained).name))
        if not Path(model.pretrained).is_file():
            say(f"measure: the tiny backbone is not built yet: pretraining it in {tmp}")
    cache_dir = cache_dir_for(d.image_cache, d.root)
    if cache_dir is not None:
        existing = cache_file(cache_dir, d.dataset, "train", m.image_size)
        if existing.is_file() and data.root == d.root:
            link_dir = tmp / "image-cache"
            link_dir.mkdir(exist_ok=True)
            if not (link_dir / existing.name).is_symlink():
                (link_dir / existing.name).symlink_to(existing)
            data = dataclasses.replace(data, image_cache=str(link_dir))
        else:
            data = dataclasses.replace(data, image_cache="off")
            say("measure: decoding the JPEGs (no decoded-image cache yet; the sweep builds it "
                "before its trials start, so their epochs may be faster)")
    return dataclasses.replace(cfg, data=data, model=model, output_dir=str(tmp / "runs"))


def _eval_seconds(run: Any, eval_set: Any, budget: int = 512) -> float:
    """Seconds to evaluate ``eval_set``: a slice of it (the same fraction of images and of
    captions, at most ``budget`` items) evaluated and scaled to its size."""
    from iclf.engine.evaluate import evaluate_split

    n_img, n_cap = len(eval_set.image_paths), len(eval_set.captions)
    if n_img == 0 or n_cap == 0:
        return 0.0
    frac = min(1.0, budget / (n_img + n_cap))
    k, q = max(1, math.ceil(n_img * frac)), max(1, math.ceil(n_cap * frac))
    part = dataclasses.replace(eval_set, image_paths=eval_set.image_paths[:k],
                               image_pids=eval_set.image_pids[:k],
                               captions=eval_set.captions[:q], caption_pids=eval_set.caption_pids[:q])
    t0 = time.perf_counter()
    evaluate_split(run.model, part, **run.eval_kwargs)
    return (time.perf_counter() - t0) * (n_img + n_cap) / (k + q)


def _sync(device: Any) -> None:
    if getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.synchronize(device)


def measure_epoch_times(cfgs: Mapping[str, ExperimentConfig], *, threads: int | None = None,
                        steps: int = 8, warmup: int = 2,
                        say: Callable[[str], None] | None = None) -> dict[str, EpochTime]:
    """:func:`measure_epoch_time` of every config in ``cfgs`` (by key), one after the other, in one
    temporary directory: what has to be built first (synthetic data, the tiny backbone) is built
    once. Removed at the end; nothing is written anywhere else."""
    say = say or (lambda text: print(f"[iclf] {text}", file=sys.stderr, flush=True))
    out: dict[str, EpochTime] = {}
    with tempfile.TemporaryDirectory(prefix="iclf-measure-") as tmp:
        for i, (key, cfg) in enumerate(cfgs.items()):
            if len(cfgs) > 1:
                say(f"measure: configuration {i + 1} of {len(cfgs)}: {key or '(base)'}")
            out[key] = _measure(cfg, Path(tmp), Path(tmp) / f"run{i}", threads=threads,
                                steps=steps, warmup=warmup, say=say)
    return out


def measure_epoch_time(cfg: ExperimentConfig, *, threads: int | None = None, steps: int = 8,
                       warmup: int = 2, say: Callable[[str], None] | None = None) -> EpochTime:
    """Time ``steps`` training steps (after ``warmup``) of ``cfg`` through the engine, data loading
    included, and an evaluation of the selection and test splits; returns the time of an epoch
    (its steps at the median step time plus its share of the selection evaluations) and of the
    final test evaluations (two: the last and the selected weights). Writes only under a temporary
    directory, removed at the end. ``threads``: torch's CPU threads meanwhile (a CPU trial gets
    ``resources.cpu`` of them from Ray)."""
    return measure_epoch_times({"": cfg}, threads=threads, steps=steps, warmup=warmup, say=say)[""]


def _measure(cfg: ExperimentConfig, tmp: Path, run_dir: Path, *, threads: int | None, steps: int,
             warmup: int, say: Callable[[str], None]) -> EpochTime:
    import gc

    import torch

    from iclf.engine.trainer import resolve_paths, setup, train_step

    with _torch_threads(threads):
        t_setup = time.perf_counter()
        cfg = _sandboxed(resolve_paths(cfg), tmp, say)
        run = setup(cfg, run_dir=run_dir, progress=False)
        say(f"measure: {cfg.name} built in {time.perf_counter() - t_setup:.1f} s on {run.device}; "
            f"timing {warmup} + {steps} training steps")
        run.dataset.set_epoch(1)
        if run.sampler is not None:
            run.sampler.set_epoch(1)
        run.model.train()
        batches = iter(run.loader)
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:  # a small dataset: a new pass (its loader start is timed too)
                batches = iter(run.loader)
                batch = next(batches)
            train_step(run.model, run.objective, run.optimizer, batch, device=run.device,
                       bf16=run.bf16, grad_clip=cfg.training.grad_clip)
            _sync(run.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        step = statistics.median(times)
        max_steps = cfg.training.max_steps_per_epoch
        n_steps = len(run.loader) if max_steps is None else min(len(run.loader), max_steps)
        select = run.data.test if run.paper else run.data.val
        select_s = _eval_seconds(run, select)
        test_s = _eval_seconds(run, run.data.test)
        del run, batches, batch
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    per_epoch = n_steps * step + select_s / max(1, cfg.evaluation.eval_period)
    say(f"measure: {step:.3g} s per step x {n_steps} steps per epoch, evaluation "
        f"{select_s:.3g} s ({'test' if cfg.evaluation.paper_protocol else 'val'}) and "
        f"{test_s:.3g} s (test)")
    return EpochTime(per_epoch, 2 * test_s,
                     f"measured: {steps} steps of {step:.3g} s x {n_steps} per epoch + evaluation")


# ------------------------------------------------------------------------ the driver's hooks


def announce(spec: AblationSpec, client, parent_run_id: str, *, resume: bool,
             plan: SweepPlan | None = None, say: Callable[[str], None] = print) -> Projection | None:
    """At the start of a real sweep: print the projection (``plan``'s, else one from the tracking
    store's history) and log it to the parent run (metric ``projected_device_hours``, tag
    ``projection``) once: a resumed sweep prints the one its parent run has."""
    parent = client.get_run(parent_run_id)
    if resume and PROJECTION_TAG in parent.data.tags:
        say(f"[iclf] projected device-hours: {parent.data.tags[PROJECTION_TAG]}")
        return None
    try:
        plan = plan or make_plan(spec, tracking_uri=client.tracking_uri)
        projection = plan.projection()
    except Exception as exc:  # noqa: BLE001 - a projection never stops a sweep
        say(f"[iclf] projected device-hours: unknown (could not project: {exc})")
        return None
    say(f"[iclf] {projection.line()}")
    if projection.device_hours is not None:
        client.log_metric(parent_run_id, PROJECTED_METRIC, projection.device_hours)
    client.set_tag(parent_run_id, PROJECTION_TAG, projection.tag()[:5000])
    return projection


def log_actual(client, experiment_id: str, parent_run_id: str,
               say: Callable[[str], None] = print) -> float:
    """At the end of a sweep: the device-hours its trials took (every child run's
    ``device_seconds`` x the share of its GPU it held, any status, as ``iclf summary`` counts them),
    logged to the parent run beside the projection, and printed with it."""
    from iclf.tracking.mlflow import child_runs

    seconds = sum(run_device_seconds(r.data.metrics, r.data.tags)
                  for r in child_runs(client, experiment_id, parent_run_id))
    hours = seconds / 3600
    metrics = client.get_run(parent_run_id).data.metrics
    if metrics.get(ACTUAL_METRIC) != hours:  # a resumed sweep finalized again: logged once
        client.log_metric(parent_run_id, ACTUAL_METRIC, hours)
    projected = metrics.get(PROJECTED_METRIC)
    versus = f" (projected {projected:.3g})" if projected is not None else ""
    say(f"[iclf] device-hours: {hours:.3g}{versus}")
    return hours


__all__ = ["SweepPlan", "Machine", "EpochTime", "Projection", "PlannedTrial", "make_plan",
           "planned_trials", "history_times", "measure_epoch_time", "measure_epoch_times",
           "read_only_client",
           "config_signature", "announce", "log_actual", "NOT_TIMING", "PROJECTED_METRIC",
           "ACTUAL_METRIC", "PROJECTION_TAG"]
