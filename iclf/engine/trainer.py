"""The single-trial training engine: one process, one device, one config.

``train(cfg)`` is the composition root: it turns the typed config into explicit arguments for the data,
model, objective and optimiser, runs the epochs, evaluates the validation split every
``eval_period`` epochs, selects the checkpoint on the validation metric, and evaluates the test split
once, for the selected checkpoint (and the last epoch). With ``evaluation.paper_protocol`` the
selection happens on test instead, as in the published code, and every result says so.
"""

from __future__ import annotations

import dataclasses
import math
import resource
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
from iclf.engine.evaluate import autocast_context, chance_levels, evaluate_split
from iclf.engine.optim import build_optimizer, build_param_groups
from iclf.engine.reporting import ConsoleReporter, JsonlReporter, Reporter, Reporters
from iclf.engine.schedule import warmup_cosine_factor
from iclf.engine.seed import get_rng_state, seed_everything, set_rng_state

EVAL_METRICS = ("R1", "R5", "R10", "mAP", "mINP")


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
    if cfg.model.pretrained is not None:
        cfg.model = dataclasses.replace(
            cfg.model, pretrained=str(Path(cfg.model.pretrained).expanduser().resolve()))
    return cfg


def prepare_data(cfg: ExperimentConfig, progress: bool = True):
    """Load the dataset; generate the synthetic one first when the config asks for it and it is absent."""
    from iclf.data.pedes import load_pedes

    root = Path(cfg.data.root)
    if cfg.data.synthetic is not None:
        from iclf.engine.prepare import ensure_synthetic

        s = cfg.data.synthetic
        ensure_synthetic(root, cfg.data.dataset, ids=s.ids, images_per_id=s.images_per_id, seed=s.seed)
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
    from iclf.models.lora import LoraSettings

    lora = None
    if cfg.lora is not None and cfg.lora.rank > 0:
        lo = cfg.lora
        lora = LoraSettings(rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, variant=lo.variant,
                            targets={"vision": list(lo.targets.vision), "text": list(lo.targets.text)},
                            train_norms=lo.train_norms, train_proj=lo.train_proj)
    w = cfg.losses.weights
    return build_iclf_model(
        backbone_name=cfg.model.backbone, pretrained=cfg.model.pretrained,
        image_size=tuple(cfg.model.image_size), num_classes=num_classes,
        fusion_style=cfg.fusion.style, fusion_depth=cfg.fusion.depth, fusion_heads=cfg.fusion.heads,
        lora=lora, need_mlm=w.mlm > 0, need_itm=w.itm > 0, need_id=w.id > 0,
        temp_init=cfg.model.temp_init, pos_interp=cfg.model.pos_interp, stride=cfg.model.stride)


def build_objective(cfg: ExperimentConfig):
    from iclf.objective import Objective

    lc = cfg.losses
    return Objective(weights=dataclasses.asdict(lc.weights), itm_ce_weight=lc.itm_ce_weight,
                     intra_alpha=lc.intra_alpha, logit_scale=1.0 / lc.temperature,
                     mask_global_text=cfg.data.masking.mask_global_text)


def build_optimizer_for(cfg: ExperimentConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    from iclf.models.lora import adapter_parameters

    o = cfg.optim
    groups = build_param_groups(
        backbone=model.backbone, new_modules=model.new_modules(), temp=model.temp,
        adapters=adapter_parameters(model.backbone), lr=o.lr, weight_decay=o.weight_decay,
        lr_factor_new=o.lr_factor_new, lr_factor_bias=o.lr_factor_bias,
        lr_factor_adapter=o.lr_factor_adapter, weight_decay_bias=o.weight_decay_bias)
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


def _is_better(new: float, old: float | None) -> bool:
    return old is None or new > old


# ----------------------------------------------------------------------------------- training


def train(cfg: ExperimentConfig, *, reporter: Reporter | None = None,
          resume_from: str | Path | None = None, run_dir: str | Path | None = None,
          progress: bool | None = None, console: bool = True,
          stop_after_epoch: int | None = None) -> TrainResult:
    """Train one configuration; returns the selected checkpoint's validation and test metrics.

    ``resume_from`` is a checkpoint directory written by an earlier run of the same config; the run
    then continues exactly where it stopped. ``stop_after_epoch`` ends the run early (as if the process
    had been interrupted) and returns None; it exists for interruption tests.
    """
    cfg = resolve_paths(cfg)
    run_dir = Path(run_dir).resolve() if run_dir is not None else cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "configs.yaml")
    if progress is None:
        progress = sys.stderr.isatty()
    device = resolve_device(cfg.device)
    bf16 = cfg.training.precision == "bf16" or (cfg.training.precision == "auto"
                                               and device.type == "cuda")
    seed_everything(cfg.seed, cfg.training.deterministic)

    from iclf.data.transforms import build_test_transform
    from iclf.tokenizer import Tokenizer

    data = prepare_data(cfg)
    paper = cfg.evaluation.paper_protocol
    select_split = "test" if paper else "val"
    select_set = data.test if paper else data.val
    if not paper and len(select_set.captions) == 0:
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
    test_transform = build_test_transform(tuple(cfg.model.image_size))
    eval_kwargs = dict(transform=test_transform, tokenizer=tokenizer,
                       batch_size=cfg.evaluation.batch_size, device=device, bf16=bf16,
                       num_workers=min(cfg.data.num_workers, 2))
    trainable, total = count_params(model)
    ckpt_dir = run_dir / "checkpoint"

    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0, "best_metrics": {},
                             "last_metrics": {}, "device_seconds": 0.0, "global_step": 0}
    if resume_from is not None:
        resume_from = Path(resume_from)
        saved = ckpt.load(resume_from / ckpt.STATE_FILE)
        ckpt.load_trainable_state_dict(model, saved["model"], resume_from / ckpt.STATE_FILE)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        state.update(saved["progress"])
        if resume_from.resolve() != ckpt_dir.resolve():
            best_file = resume_from / ckpt.BEST_FILE
            if best_file.is_file():
                ckpt.save_atomic(ckpt.load(best_file), ckpt_dir / ckpt.BEST_FILE)

    reporters = Reporters([reporter, JsonlReporter(run_dir / "metrics.jsonl"),
                           ConsoleReporter() if console else None])
    chance = {"val": chance_levels(data.val.caption_pids, data.val.image_pids)
              if len(data.val.captions) else {},
              "test": chance_levels(data.test.caption_pids, data.test.image_pids)}
    reporters.on_start({"config": flatten(to_dict(cfg)), "run_dir": str(run_dir),
                        "device": str(device), "trainable_params": trainable,
                        "total_params": total, "dataset_fingerprint": data.fingerprint,
                        "dataset_stats": data.stats(), "paper_protocol": paper,
                        "chance": chance, "resumed_from_epoch": state["epoch"],
                        "torch_threads": torch.get_num_threads()})

    epochs = cfg.training.epochs
    metric = cfg.evaluation.metric
    max_steps = cfg.training.max_steps_per_epoch
    result: TrainResult | None = None
    for epoch in range(state["epoch"] + 1, epochs + 1):
        t0 = time.perf_counter()
        # Everything random in an epoch derives from (seed, epoch): a resumed run replays it exactly.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        n_seen = 0
        n_steps = len(loader) if max_steps is None else min(len(loader), max_steps)
        bar = tqdm(total=n_steps, desc=f"epoch {epoch}/{epochs}", disable=not progress,
                   leave=False, dynamic_ncols=True)
        lr_now = optimizer.param_groups[0]["lr"]
        for step, batch in enumerate(loader):
            if step >= n_steps:
                break
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            with autocast_context(device, bf16):
                losses = objective(model, batch)
            total_loss = losses["loss"]
            state["global_step"] += 1
            if not torch.isfinite(total_loss).item():
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, step {step + 1} (global step "
                    f"{state['global_step']}): {parts}")
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            if cfg.training.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.training.grad_clip)
            optimizer.step()
            bs = batch["images"].shape[0]
            n_seen += bs
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * bs
            elapsed = time.perf_counter() - t0
            bar.set_postfix({**{k: f"{v / n_seen:.3f}" for k, v in sums.items()},
                             "lr": f"{lr_now:.2e}", "samples/s": f"{n_seen / elapsed:.1f}"})
            bar.update(1)
        bar.close()
        train_seconds = time.perf_counter() - t0
        scheduler.step()

        metrics: dict[str, float] = {"epoch": epoch, "lr": lr_now,
                                     "samples_per_s": n_seen / max(train_seconds, 1e-9)}
        metrics.update({f"train/{k}": v / max(n_seen, 1) for k, v in sums.items()})
        evaluated = epoch % cfg.evaluation.eval_period == 0 or epoch == epochs
        if evaluated:
            state["last_metrics"] = evaluate_split(model, select_set, **eval_kwargs)
            value = state["last_metrics"][metric]
            if _is_better(value, state["best"]):
                state.update(best=value, best_epoch=epoch, best_metrics=dict(state["last_metrics"]))
                ckpt.save_atomic(ckpt.trainable_state_dict(model), ckpt_dir / ckpt.BEST_FILE)
        metrics.update({f"{select_split}/{k}": v for k, v in state["last_metrics"].items()})
        if state["best"] is not None:
            metrics[f"best/{select_split}/{metric}"] = state["best"]
        metrics["best_epoch"] = state["best_epoch"]
        state["epoch"] = epoch
        state["device_seconds"] += time.perf_counter() - t0
        metrics["device_seconds"] = state["device_seconds"]
        ckpt.save_atomic({"model": ckpt.trainable_state_dict(model),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "rng": get_rng_state(), "progress": dict(state)},
                         ckpt_dir / ckpt.STATE_FILE)
        if epoch == epochs:
            result = _final_result(model, data, state, eval_kwargs, ckpt_dir, run_dir, paper,
                                   trainable, total, device, chance)
            reporters.on_result(result)
        reporters.on_epoch(epoch, metrics, ckpt_dir)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < epochs:
            return None  # type: ignore[return-value]
    if result is None:  # resumed after the last epoch had already finished
        result = _final_result(model, data, state, eval_kwargs, ckpt_dir, run_dir, paper, trainable,
                               total, device, chance)
        reporters.on_result(result)
    return result


def _final_result(model, data, state, eval_kwargs, ckpt_dir, run_dir, paper, trainable, total,
                  device, chance) -> TrainResult:
    """Test metrics for the last epoch and for the selected checkpoint (evaluated once each)."""
    t0 = time.perf_counter()
    val_last = dict(state["last_metrics"]) if not paper else {}
    test_last = evaluate_split(model, data.test, **eval_kwargs)
    last_weights = ckpt.trainable_state_dict(model)
    ckpt.load_trainable_state_dict(model, ckpt.load(ckpt_dir / ckpt.BEST_FILE), ckpt_dir)
    test_best = evaluate_split(model, data.test, **eval_kwargs)
    ckpt.load_trainable_state_dict(model, last_weights)
    state["device_seconds"] += time.perf_counter() - t0
    return TrainResult(best_epoch=state["best_epoch"],
                       val=dict(state["best_metrics"]) if not paper else {},
                       test=test_best, test_last=test_last, val_last=val_last,
                       trainable_params=trainable, total_params=total,
                       peak_memory_mb=peak_memory_mb(device),
                       device_seconds=state["device_seconds"], run_dir=str(run_dir),
                       paper_protocol=paper, chance=chance)


def evaluate_run(run_dir: str | Path, *, which: str = "best", split: str = "test",
                 device: str | None = None) -> dict[str, float]:
    """Rebuild a finished run from its ``configs.yaml`` and evaluate a checkpoint on a split."""
    from iclf.config import load_config
    from iclf.data.transforms import build_test_transform
    from iclf.tokenizer import Tokenizer

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "configs.yaml")
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    dev = resolve_device(cfg.device)
    data = prepare_data(cfg)
    seed_everything(cfg.seed, cfg.training.deterministic)
    model = build_model(cfg, num_classes=data.num_train_ids).to(dev)
    ckpt_dir = run_dir / "checkpoint"
    if which == "best":
        weights_file = ckpt_dir / ckpt.BEST_FILE
        weights = ckpt.load(weights_file)
    else:
        weights_file = ckpt_dir / ckpt.STATE_FILE
        weights = ckpt.load(weights_file)["model"]
    ckpt.load_trainable_state_dict(model, weights, weights_file)
    bf16 = cfg.training.precision == "bf16" or (cfg.training.precision == "auto"
                                               and dev.type == "cuda")
    eval_set = data.test if split == "test" else data.val
    return evaluate_split(model, eval_set, transform=build_test_transform(tuple(cfg.model.image_size)),
                          tokenizer=Tokenizer(), batch_size=cfg.evaluation.batch_size, device=dev,
                          bf16=bf16)


def is_finite_metrics(m: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in m.values())
