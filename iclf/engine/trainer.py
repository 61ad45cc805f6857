"""The single-trial training engine: one process, one device, one config.

``train(cfg)`` reads top to bottom as its phases:

* :func:`setup` is the composition root: the typed config turned into explicit arguments for the
  data, model, objective, optimiser, schedule and loader (the ``build_*`` functions), as a
  :class:`Run`; :func:`restore` loads a checkpoint into it;
* :func:`run_epoch` trains one epoch (:func:`train_step` per batch), evaluates the validation split
  every ``eval_period`` epochs and keeps the selected checkpoint, updating a :class:`TrainState`;
  :func:`save_checkpoint` writes that state after every epoch;
* :func:`final_result` evaluates the test split once, for the selected checkpoint and the last epoch.

With ``evaluation.paper_protocol`` the selection happens on test instead, as in the published code,
and every result says so.
"""

from __future__ import annotations

import dataclasses
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from iclf.config import ExperimentConfig, flatten, save_config, to_dict
from iclf.engine import checkpoint as ckpt
from iclf.engine.evaluate import (
    autocast_context, chance_levels, evaluate_split, evaluate_split_ranked, use_bf16)
from iclf.engine.retrieval import PICTURE_FILE, RECORD_FILE, retrieval_queries, save_retrieval
from iclf.engine.optim import build_optimizer, build_param_groups, build_reference_param_groups
from iclf.engine.reporting import ConsoleReporter, JsonlReporter, Reporter, Reporters
from iclf.engine.schedule import warmup_cosine_factor
from iclf.engine.seed import get_rng_state, seed_everything, set_rng_state
from iclf.files import write_atomic
from iclf.names import EVAL_METRICS, better


class NonFiniteLossError(FloatingPointError):
    """Raised at the first step whose loss is NaN or infinite."""


@dataclass
class TrainResult:
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    test_last: dict[str, float]
    val_last: dict[str, float]
    trainable_params: int
    total_params: int
    peak_memory_mb: float
    device_seconds: float
    run_dir: str
    paper_protocol: bool = False
    chance: dict[str, dict[str, float]] = field(default_factory=dict)
    epochs_trained: int = 0  # less than training.epochs when stopped early (train(until_epoch=...))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["protocol"] = "paper (checkpoint selected on TEST)" if self.paper_protocol else \
            "held-out (checkpoint selected on val)"
        return d

    def describe(self) -> str:
        def fmt(m: dict[str, float]) -> str:
            return "  ".join(f"{k} {m[k]:6.2f}" for k in EVAL_METRICS if k in m)

        sel = "TEST (paper protocol)" if self.paper_protocol else "val"
        lines = [f"[iclf] selected epoch {self.best_epoch} on {sel}",
                 f"  val  (selected) : {fmt(self.val)}",
                 f"  test (selected) : {fmt(self.test)}",
                 f"  test (last)     : {fmt(self.test_last)}"]
        if self.chance.get("test"):
            lines.append(f"  test (chance)   : {fmt(self.chance['test'])}")
        if self.paper_protocol:
            lines.append("  NOTE: selected on the test split (paper_protocol); not a held-out estimate")
        lines.append(f"  trainable parameters {self.trainable_params:,} / {self.total_params:,}; "
                     f"device time {self.device_seconds:.1f} s; peak memory {self.peak_memory_mb:.0f} MB")
        return "\n".join(lines)


# ------------------------------------------------------------------------------ building blocks


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no CUDA device is visible")
    return torch.device(name)


def resolve_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Absolute paths for everything the run touches (Ray Tune changes a trial's working directory)."""
    cfg = dataclasses.replace(cfg)
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    cfg.data = dataclasses.replace(cfg.data, root=str(Path(cfg.data.root).expanduser().resolve()))
    if cfg.data.image_cache not in ("off", "auto"):
        cfg.data = dataclasses.replace(
            cfg.data, image_cache=str(Path(cfg.data.image_cache).expanduser().resolve()))
    for key in ("pretrained", "init_from"):
        if getattr(cfg.model, key) is not None:
            cfg.model = dataclasses.replace(
                cfg.model, **{key: str(Path(getattr(cfg.model, key)).expanduser().resolve())})
    return cfg


def prepare_data(cfg: ExperimentConfig, progress: bool = True):
    """Load the dataset; generate the synthetic one first when the config asks for it and it is absent."""
    from iclf.data.pedes import load_pedes

    root = Path(cfg.data.root)
    if cfg.data.synthetic is not None:
        from iclf.engine.prepare import ensure_synthetic

        s = cfg.data.synthetic
        ensure_synthetic(root, cfg.data.dataset, ids=s.ids, images_per_id=s.images_per_id,
                         seed=s.seed, eval_ids=s.eval_ids)
    return load_pedes(cfg.data.dataset, root, val_fraction=cfg.data.val_fraction,
                      split_seed=cfg.data.split_seed, verify_images=cfg.data.verify_images)


def ensure_backbone_weights(cfg: ExperimentConfig, progress: bool = True) -> None:
    """Build the tiny pretrained backbone of the synthetic default if the config asks and it is absent."""
    m = cfg.model
    if m.build_pretrained and m.pretrained and not Path(m.pretrained).is_file():
        from iclf.engine.pretrain import pretrain_backbone

        pretrain_backbone(Path(m.pretrained), backbone=m.backbone, image_size=tuple(m.image_size),
                          dataset=cfg.data.dataset, seed=1000 + (cfg.data.synthetic.seed
                                                                 if cfg.data.synthetic else 0),
                          progress=progress)


def build_model(cfg: ExperimentConfig, num_classes: int) -> torch.nn.Module:
    from iclf.models.iclf import build_iclf_model

    w = cfg.losses.weights
    model = build_iclf_model(
        backbone_name=cfg.model.backbone, pretrained=cfg.model.pretrained,
        image_size=tuple(cfg.model.image_size), num_classes=num_classes,
        fusion_style=cfg.fusion.style, fusion_depth=cfg.fusion.depth, fusion_heads=cfg.fusion.heads,
        lora=cfg.lora, need_mlm=w.mlm > 0, need_itm=w.itm > 0, need_id=w.id > 0,
        temp_init=cfg.model.temp_init, pos_interp=cfg.model.pos_interp, stride=cfg.model.stride,
        act=cfg.model.act)
    if cfg.model.init_from is not None:  # a published IRRA/ICLF best.pth, every weight from it
        from iclf.models.reference import load_reference_state_dict, read_reference_checkpoint

        state = read_reference_checkpoint(cfg.model.init_from)
        load_reference_state_dict(model, state, cfg.model.init_from)
    return model


def build_objective(cfg: ExperimentConfig):
    from iclf.objective import Objective

    lc = cfg.losses
    return Objective(weights=dataclasses.asdict(lc.weights), itm_ce_weight=lc.itm_ce_weight,
                     intra_alpha=lc.intra_alpha, logit_scale=1.0 / lc.temperature,
                     mask_global_text=cfg.data.masking.mask_global_text)


def param_groups_for(cfg: ExperimentConfig, model: torch.nn.Module) -> list[dict]:
    """The optimiser's parameter groups under ``optim.groups`` (reference name rule or by module)."""
    from iclf.models.lora import adapter_parameters

    o = cfg.optim
    if o.groups == "reference":
        from iclf.models.reference import reference_name

        return build_reference_param_groups(
            model.named_parameters(), reference_name, lr=o.lr, weight_decay=o.weight_decay,
            lr_factor_new=o.lr_factor_new, lr_factor_bias=o.lr_factor_bias,
            weight_decay_bias=o.weight_decay_bias)
    return build_param_groups(
        backbone=model.backbone, new_modules=model.new_modules(), temp=model.temp,
        adapters=adapter_parameters(model.backbone), lr=o.lr, weight_decay=o.weight_decay,
        lr_factor_new=o.lr_factor_new, lr_factor_bias=o.lr_factor_bias,
        lr_factor_adapter=o.lr_factor_adapter, weight_decay_bias=o.weight_decay_bias)


def build_optimizer_for(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups_for(cfg, model)
    return build_optimizer(groups, name=o.name, lr=o.lr, eps=o.eps, betas=tuple(o.betas),
                           weight_decay=o.weight_decay)


def build_scheduler(cfg: ExperimentConfig, optimizer: torch.optim.Optimizer):
    s = cfg.schedule
    target_ratio = s.target_lr / cfg.optim.lr

    def factor(epoch_index: int) -> float:
        return warmup_cosine_factor(epoch_index, total_epochs=cfg.training.epochs,
                                    warmup_epochs=s.warmup_epochs, warmup_factor=s.warmup_factor,
                                    target_ratio=target_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_train_loader(cfg: ExperimentConfig, data, tokenizer, device: torch.device):
    from iclf.data.cache import train_image_cache
    from iclf.data.datasets import TrainPairs, collate
    from iclf.data.sampler import IdentitySampler
    from iclf.data.transforms import build_train_transform

    d = cfg.data
    transform = build_train_transform(tuple(cfg.model.image_size), flip=d.augment.flip,
                                      pad_crop=d.augment.pad_crop,
                                      random_erasing=d.augment.random_erasing)
    # data.image_cache: the decoded, resized training images from one shared file (built on first use)
    image_cache = train_image_cache(data, tuple(cfg.model.image_size), d.image_cache, d.root,
                                    num_workers=d.num_workers)
    dataset = TrainPairs(data.train, transform=transform, tokenizer=tokenizer,
                         mask_rate=d.masking.rate, mask_prob=d.masking.mask_prob,
                         random_prob=d.masking.random_prob,
                         mask_global_text=d.masking.mask_global_text, seed=cfg.seed,
                         image_cache=image_cache)
    sampler = None
    if d.sampler == "identity":
        sampler = IdentitySampler([s.pid for s in data.train], p=d.batch_size // d.num_instance,
                                  k=d.num_instance, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=d.batch_size, sampler=sampler,
                        shuffle=sampler is None, num_workers=d.num_workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", drop_last=False,
                        persistent_workers=False)
    return dataset, sampler, loader


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------------- training


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch; every checkpoint saves it (``progress``)."""

    epoch: int = 0                      # epochs completed
    global_step: int = 0                # optimiser steps taken
    best: float | None = None           # best value of the selection metric so far
    best_epoch: int = 0                 # the epoch it came from (the selected checkpoint)
    best_metrics: dict[str, float] = field(default_factory=dict)  # selection split at best_epoch
    last_metrics: dict[str, float] = field(default_factory=dict)  # ... at the last evaluation
    device_seconds: float = 0.0         # time spent training and evaluating


@dataclass
class Run:
    """Everything :func:`setup` builds for one run from its config, used by every phase after it."""

    cfg: ExperimentConfig
    run_dir: Path
    device: torch.device
    bf16: bool
    data: Any                           # iclf.data.pedes.PedesDataset
    model: torch.nn.Module
    objective: Any                      # iclf.objective.Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any                      # torch LambdaLR
    dataset: Any                        # the training pairs (set_epoch)
    sampler: Any                        # the identity sampler, or None
    loader: DataLoader
    eval_kwargs: dict[str, Any]         # how evaluate_split extracts features
    retrieval_queries: list[int] = field(default_factory=list)  # the pictured queries (retrieval)

    @property
    def paper(self) -> bool:
        return self.cfg.evaluation.paper_protocol

    @property
    def select_split(self) -> str:
        """The split checkpoints are selected on: val, or test under the paper protocol."""
        return "test" if self.paper else "val"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"


def setup(cfg: ExperimentConfig, *, run_dir: str | Path | None = None,
          progress: bool = True) -> Run:
    """Resolve paths, write ``configs.yaml``, load the data and build the model, objective,
    optimiser, schedule and loader: the run, before its first step."""
    from iclf.data.transforms import build_test_transform
    from iclf.tokenizer import Tokenizer

    cfg = resolve_paths(cfg)
    run_dir = Path(run_dir).resolve() if run_dir is not None else cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "configs.yaml")
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.training.precision, device)
    seed_everything(cfg.seed, cfg.training.deterministic)
    data = prepare_data(cfg)
    if not cfg.evaluation.paper_protocol and len(data.val.captions) == 0:
        raise ValueError(f"{cfg.data.dataset} has an empty validation split; set data.val_fraction > 0 "
                         f"(ICFG-PEDES) or evaluation.paper_protocol=true to select on test")
    ensure_backbone_weights(cfg, progress=progress)
    tokenizer = Tokenizer()
    # Re-seed right before building: whatever ran above (data generation, pretraining) must not change
    # the initial weights, or a resumed run would rebuild different frozen weights.
    seed_everything(cfg.seed, cfg.training.deterministic)
    model = build_model(cfg, num_classes=data.num_train_ids).to(device)
    objective = build_objective(cfg)
    optimizer = build_optimizer_for(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    dataset, sampler, loader = build_train_loader(cfg, data, tokenizer, device)
    eval_kwargs = dict(transform=build_test_transform(tuple(cfg.model.image_size)),
                       tokenizer=tokenizer, batch_size=cfg.evaluation.batch_size, device=device,
                       bf16=bf16, num_workers=min(cfg.data.num_workers, 2))
    select_set = data.test if cfg.evaluation.paper_protocol else data.val
    return Run(cfg=cfg, run_dir=run_dir, device=device, bf16=bf16, data=data, model=model,
               objective=objective, optimizer=optimizer, scheduler=scheduler, dataset=dataset,
               sampler=sampler, loader=loader, eval_kwargs=eval_kwargs,
               retrieval_queries=retrieval_queries(select_set.caption_pids))


def restore(run: Run, checkpoint_dir: str | Path) -> TrainState:
    """Load a checkpoint directory written by an earlier run of the same config into ``run``
    (weights, optimiser, schedule, RNG) and return its progress; a selected checkpoint there that is
    not the run's own is copied in."""
    checkpoint_dir = Path(checkpoint_dir)
    saved = ckpt.load(checkpoint_dir / ckpt.STATE_FILE)
    ckpt.load_trainable_state_dict(run.model, saved["model"], checkpoint_dir / ckpt.STATE_FILE)
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    if checkpoint_dir.resolve() != run.checkpoint_dir.resolve():
        best_file = checkpoint_dir / ckpt.BEST_FILE
        if best_file.is_file():
            ckpt.save_atomic(ckpt.load(best_file), run.checkpoint_dir / ckpt.BEST_FILE)
        for name in (RECORD_FILE, PICTURE_FILE):  # what the selected checkpoint retrieves
            if (checkpoint_dir / name).is_file():
                # renamed into place, never written into the old file: it may be a hard link of a
                # sweep's epoch snapshot (iclf.sweep.snapshot)
                write_atomic(run.checkpoint_dir / name,
                             lambda tmp, src=checkpoint_dir / name: shutil.copyfile(src, tmp))
    return TrainState(**saved["progress"])


def save_checkpoint(run: Run, state: TrainState, *, durable: bool = True) -> None:
    """``state.pt``: everything a resumed run needs to continue exactly here (written atomically;
    ``durable``: see :func:`iclf.engine.checkpoint.save_atomic`)."""
    ckpt.save_atomic({"model": ckpt.trainable_state_dict(run.model),
                      "optimizer": run.optimizer.state_dict(),
                      "scheduler": run.scheduler.state_dict(), "rng": get_rng_state(),
                      "progress": dataclasses.asdict(state)},
                     run.checkpoint_dir / ckpt.STATE_FILE, durable=durable,
                     reuse=run.checkpoint_dir / ckpt.SPARE_FILE)


def train_step(model: torch.nn.Module, objective, optimizer: torch.optim.Optimizer,
               batch: dict[str, Any], *, device: torch.device, bf16: bool = False,
               grad_clip: float | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step on one batch; returns the (detached) losses. Raises
    :class:`NonFiniteLossError`, naming every loss, before a NaN or infinite loss updates anything."""
    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
             for k, v in batch.items()}
    with autocast_context(device, bf16):
        losses = objective(model, batch)
    total = losses["loss"]
    if not torch.isfinite(total).item():
        raise NonFiniteLossError(", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items()))
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}


def run_epoch(run: Run, state: TrainState, epoch: int, *, progress: bool) -> dict[str, float]:
    """Train one epoch, step the schedule, evaluate the selection split when due and keep the best
    checkpoint; returns the epoch's metrics (never test ones, unless the paper protocol selects on
    test)."""
    cfg = run.cfg
    t0 = time.perf_counter()
    # Everything random in an epoch derives from (seed, epoch): a resumed run replays it exactly.
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    run.dataset.set_epoch(epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    run.model.train()
    max_steps = cfg.training.max_steps_per_epoch
    n_steps = len(run.loader) if max_steps is None else min(len(run.loader), max_steps)
    lr = run.optimizer.param_groups[0]["lr"]
    sums: dict[str, float] = {}
    n_seen = 0
    bar = tqdm(total=n_steps, desc=f"epoch {epoch}/{cfg.training.epochs}", disable=not progress,
               leave=False, dynamic_ncols=True)
    for step, batch in enumerate(run.loader):
        if step >= n_steps:
            break
        state.global_step += 1
        try:
            losses = train_step(run.model, run.objective, run.optimizer, batch, device=run.device,
                                bf16=run.bf16, grad_clip=cfg.training.grad_clip)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {step + 1} (global "
                                     f"step {state.global_step}): {exc}") from None
        bs = batch["images"].shape[0]
        n_seen += bs
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v) * bs
        bar.set_postfix({**{k: f"{v / n_seen:.3f}" for k, v in sums.items()}, "lr": f"{lr:.2e}",
                         "samples/s": f"{n_seen / (time.perf_counter() - t0):.1f}"})
        bar.update(1)
    bar.close()
    train_seconds = time.perf_counter() - t0
    run.scheduler.step()

    metrics: dict[str, float] = {"epoch": epoch, "lr": lr,
                                 "samples_per_s": n_seen / max(train_seconds, 1e-9)}
    metrics.update({f"train/{k}": v / max(n_seen, 1) for k, v in sums.items()})
    metric = cfg.evaluation.metric
    if epoch % cfg.evaluation.eval_period == 0 or epoch == cfg.training.epochs:
        select_set = run.data.test if run.paper else run.data.val
        # the metrics and, from the same pass, the top-10 images of the pictured queries
        state.last_metrics, ranking = evaluate_split_ranked(
            run.model, select_set, run.retrieval_queries, **run.eval_kwargs)
        value = state.last_metrics[metric]
        if better(value, state.best, "max"):  # every retrieval metric: higher is better
            state.best, state.best_epoch = value, epoch
            state.best_metrics = dict(state.last_metrics)
            ckpt.save_atomic(ckpt.trainable_state_dict(run.model),
                             run.checkpoint_dir / ckpt.BEST_FILE)
            save_retrieval(ranking, select_set, run.checkpoint_dir, split=run.select_split,
                           epoch=epoch)
    metrics.update({f"{run.select_split}/{k}": v for k, v in state.last_metrics.items()})
    if state.best is not None:
        metrics[f"best/{run.select_split}/{metric}"] = state.best
    metrics["best_epoch"] = state.best_epoch
    state.epoch = epoch
    state.device_seconds += time.perf_counter() - t0
    metrics["device_seconds"] = state.device_seconds
    return metrics


def final_result(run: Run, state: TrainState, chance: dict[str, dict[str, float]]) -> TrainResult:
    """Test metrics of the last epoch and of the selected checkpoint (evaluated once each)."""
    t0 = time.perf_counter()
    test_last = evaluate_split(run.model, run.data.test, **run.eval_kwargs)
    last_weights = ckpt.trainable_state_dict(run.model)
    best_file = run.checkpoint_dir / ckpt.BEST_FILE
    ckpt.load_trainable_state_dict(run.model, ckpt.load(best_file), best_file)
    test_best = evaluate_split(run.model, run.data.test, **run.eval_kwargs)
    ckpt.load_trainable_state_dict(run.model, last_weights)
    state.device_seconds += time.perf_counter() - t0
    trainable, total = count_params(run.model)
    return TrainResult(best_epoch=state.best_epoch,
                       val={} if run.paper else dict(state.best_metrics),
                       test=test_best, test_last=test_last,
                       val_last={} if run.paper else dict(state.last_metrics),
                       trainable_params=trainable, total_params=total,
                       peak_memory_mb=peak_memory_mb(run.device),
                       device_seconds=state.device_seconds, run_dir=str(run.run_dir),
                       paper_protocol=run.paper, chance=chance, epochs_trained=state.epoch)


def train(cfg: ExperimentConfig, *, reporter: Reporter | None = None,
          resume_from: str | Path | None = None, run_dir: str | Path | None = None,
          progress: bool | None = None, console: bool = True,
          until_epoch: int | None = None, durable_state: bool = True,
          final_state: bool = True) -> TrainResult:
    """Train one configuration; returns the selected checkpoint's validation and test metrics.

    ``resume_from`` is a checkpoint directory written by an earlier run of the same config; the run
    then continues exactly where it stopped. ``until_epoch`` ends training after that epoch, as an
    early-stopping scheduler does (the schedule still spans ``training.epochs``): the selected
    checkpoint so far is evaluated on test and ``result.epochs_trained`` says where it stopped.
    ``durable_state=False`` skips flushing each epoch's ``state.pt`` to the disk (about 1 s per
    epoch for the demo's full fine-tuning) when a damaged one has a fallback, as a sweep trial's
    older epoch snapshot is (:mod:`iclf.sweep.snapshot`). ``final_state=False`` writes no ``state.pt`` after the schedule's
    last epoch, when nothing is left to resume (a sweep trial's state is removed once it finished).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    run = setup(cfg, run_dir=run_dir, progress=progress)
    state = TrainState() if resume_from is None else restore(run, resume_from)
    epochs = run.cfg.training.epochs
    last = epochs if until_epoch is None else max(1, min(until_epoch, epochs))
    reporters = Reporters([reporter, JsonlReporter(run.run_dir / "metrics.jsonl"),
                           ConsoleReporter() if console else None])
    data = run.data
    chance = {"val": chance_levels(data.val.caption_pids, data.val.image_pids)
              if len(data.val.captions) else {},
              "test": chance_levels(data.test.caption_pids, data.test.image_pids)}
    trainable, total = count_params(run.model)
    reporters.on_start({"config": flatten(to_dict(run.cfg)), "run_dir": str(run.run_dir),
                        "device": str(run.device), "trainable_params": trainable,
                        "total_params": total, "dataset_fingerprint": data.fingerprint,
                        "dataset_stats": data.stats(), "paper_protocol": run.paper,
                        "chance": chance, "resumed_from_epoch": state.epoch,
                        "torch_threads": torch.get_num_threads()})
    result: TrainResult | None = None
    for epoch in range(state.epoch + 1, last + 1):
        metrics = run_epoch(run, state, epoch, progress=progress)
        if final_state or epoch < epochs:
            save_checkpoint(run, state, durable=durable_state)
        if epoch == last:  # before the last report: Tune may end the process right after it
            result = final_result(run, state, chance)
            reporters.on_result(result)
        reporters.on_epoch(epoch, metrics, run.checkpoint_dir)
    if result is None:  # resumed at or after the last epoch
        result = final_result(run, state, chance)
        reporters.on_result(result)
    return result
