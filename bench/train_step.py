"""Benchmark: training throughput of a real experiment config through the engine's own parts.

Builds the model, objective, optimiser and data loader exactly as ``iclf train`` does (from
``experiments/synthetic.yaml`` by default: tiny backbone, synthetic CUHK-PEDES, the full ICLF loss
set) and times ``--steps`` calls of the engine's own ``train_step`` after ``--warmup`` ones, data
loading included. Prints one JSON object: samples/s and seconds per step (median and minimum: on a
shared machine the minimum is the better estimate of the uncontended time), trainable parameters and
peak memory. On a GPU (``device=cuda`` or ``auto`` with CUDA) it runs under the config's precision
(bf16 autocast for ``auto``); pass ``--config experiments/iclf_cuhk.yaml data.root=...`` with real
data and weights to measure ViT-B-16.

Usage: python bench/train_step.py [--config experiments/synthetic.yaml] [--steps 10] [--warmup 2]
       [--threads N] [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "experiments" / "synthetic.yaml"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args()

    import torch

    from iclf.config import load_config
    from iclf.engine.evaluate import use_bf16
    from iclf.engine.seed import seed_everything
    from iclf.engine.trainer import (
        build_model, build_objective, build_optimizer_for, build_train_loader, count_params,
        ensure_backbone_weights, peak_memory_mb, prepare_data, resolve_device, resolve_paths,
        train_step)
    from iclf.tokenizer import Tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolve_paths(load_config(args.config, args.overrides))
    device = resolve_device(cfg.device)
    bf16 = use_bf16(cfg.training.precision, device)
    seed_everything(cfg.seed, cfg.training.deterministic)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        data = prepare_data(cfg, progress=False)
        ensure_backbone_weights(cfg, progress=False)
    model = build_model(cfg, num_classes=data.num_train_ids).to(device)
    objective = build_objective(cfg)
    optimizer = build_optimizer_for(cfg, model)
    _, _, loader = build_train_loader(cfg, data, Tokenizer(), device)
    trainable, total = count_params(model)

    times: list[float] = []
    batch_sizes: list[int] = []
    model.train()
    it = iter(loader)
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        train_step(model, objective, optimizer, batch, device=device, bf16=bf16,
                   grad_clip=cfg.training.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            batch_sizes.append(int(batch["images"].shape[0]))
    median = statistics.median(times)
    print(json.dumps({
        "config": str(args.config), "overrides": args.overrides, "device": str(device),
        "bf16": bf16, "backbone": cfg.model.backbone, "image_size": list(cfg.model.image_size),
        "batch_size": cfg.data.batch_size, "lora_rank": cfg.lora.rank if cfg.lora else 0,
        "fusion_depth": cfg.fusion.depth, "torch_threads": torch.get_num_threads(),
        "trainable_params": trainable, "total_params": total, "steps": len(times),
        "seconds_per_step_median": round(median, 4),
        "seconds_per_step_min": round(min(times), 4),
        "samples_per_s": round(statistics.mean(batch_sizes) / median, 2),
        "samples_per_s_best": round(statistics.mean(batch_sizes) / min(times), 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
    }, indent=2))


if __name__ == "__main__":
    main()
