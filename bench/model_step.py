"""Benchmark: one model step of ICLF, full fine-tuning vs LoRA, and trainable-parameter counts.

Prints one JSON object with three parts.

* ``cpu``: the ``tiny`` backbone (IRRA fusion, depth 4, 8 heads, MLM head) at 128x64, batch 8,
  full fine-tuning vs LoRA r=16 (q, k, v, out, mlp in both towers; norms and projections frozen).
  The step is forward + backward of a loss-free surrogate: the sum of the global image and text
  features plus an MLM-style pass (fusion, MLM logits at ~15 % of the text positions, their
  log-sum-exp). Seconds per sample are the median step over ``--steps`` timed steps (after one
  warm-up) divided by the batch (the minimum is reported too: on a shared machine it is the
  better estimate of the uncontended time; one torch thread by default). Memory is the peak
  resident set size, ``ru_maxrss`` from ``resource.getrusage(RUSAGE_SELF)``, of a fresh
  subprocess per case, reported with the resident size just before the first step (``VmRSS``)
  and their difference (the step's own peak).
* ``param_counts``: ViT-B-16 at 384x128, built on the meta device (no weights, no memory):
  trainable parameters of the backbone with LoRA at ranks 4/8/16/32/64 (q, k, v, out, mlp, both
  towers), checked against the closed form ``r (in + out)`` per targeted linear, and the whole
  model's trainable count (adding the fusion module, MLM/ITM heads, an 11,003-way ID classifier
  and ``temp``); and full fine-tuning.
* ``gpu``: if CUDA is available, ViT-B-16 at 384x128, batch 64, bf16 autocast with fp32 weights:
  samples/s of a training step (forward + backward of the same surrogate + AdamW step), MFU
  (FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` over the bf16 dense
  peak of the card), and the peak allocated memory as a fraction of the card's memory, for full
  fine-tuning and LoRA r=16. Otherwise ``null`` with the reason.

Usage: python bench/model_step.py [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

# Make `iclf` importable when run as `python bench/model_step.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from iclf.models.iclf import ICLFModel, build_iclf_model  # noqa: E402
from iclf.models.lora import LoraSettings, count_trainable, expected_lora_params  # noqa: E402
from iclf.models.registry import get_spec  # noqa: E402
from iclf.tokenizer import EOT_ID, SOT_ID  # noqa: E402

ALL_TARGETS = {"vision": ["q", "k", "v", "out", "mlp"], "text": ["q", "k", "v", "out", "mlp"]}
FUSION = {"fusion_style": "irra", "fusion_depth": 4, "fusion_heads": 8}
CUHK_IDS = 11003
MASK_RATE = 0.15
# Dense bf16 tensor-core peak (FLOP/s) by device-name fragment; the first match wins.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]


def lora_settings(rank: int) -> LoraSettings | None:
    if rank == 0:
        return None
    return LoraSettings(rank=rank, alpha=2.0 * rank, dropout=0.1, targets=ALL_TARGETS,
                        train_norms=False, train_proj=False)


def build(backbone: str, image_size: tuple[int, int], rank: int, *, itm: bool = False,
          ident: bool = False) -> ICLFModel:
    return build_iclf_model(
        backbone_name=backbone, pretrained=None, image_size=image_size, num_classes=CUHK_IDS,
        lora=lora_settings(rank), need_mlm=True, need_itm=itm, need_id=ident, temp_init=0.07,
        pos_interp="bilinear", stride=None, **FUSION,
    )


def make_batch(batch: int, image_size: tuple[int, int], device: torch.device, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images, captions of 10-40 tokens (SOT ... EOT, zero padding) and an MLM mask."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *image_size, generator=g)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    mask = torch.zeros(batch, 77, dtype=torch.bool)
    for i in range(batch):
        n = int(torch.randint(10, 41, (1,), generator=g))
        ids[i, 0], ids[i, n + 1] = SOT_ID, EOT_ID
        ids[i, 1 : n + 1] = torch.randint(1, 40000, (n,), generator=g)
        mask[i, 1 : n + 1] = torch.rand(n, generator=g) < MASK_RATE
        mask[i, 1] = True  # at least one masked position per caption
    return images.to(device), ids.to(device), mask.to(device)


def surrogate_loss(model: ICLFModel, images, ids, mask) -> torch.Tensor:
    """Global features plus an MLM-style fused pass, with no real loss function."""
    feats = model(images, ids)
    fused = model.fuse(feats.text_tokens, feats.image_tokens)
    logits = model.mlm_logits(fused, mask)  # (M, V)
    return feats.image_feat.sum() + feats.text_feat.sum() + logits.float().logsumexp(-1).mean()


def vm_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_case(rank: int, steps: int, batch: int = 8, image_size=(128, 64)) -> dict:
    """Run in a fresh subprocess: forward+backward seconds per sample and peak RSS."""
    torch.manual_seed(0)
    model = build("tiny", image_size, rank).train()
    images, ids, mask = make_batch(batch, image_size, torch.device("cpu"))
    rss_before = vm_rss_mb()
    times = []
    for step in range(steps + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        surrogate_loss(model, images, ids, mask).backward()
        if step:  # step 0 is the warm-up
            times.append(time.perf_counter() - t0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    step_s = statistics.median(times)
    return {
        "rank": rank,
        "trainable_params": count_trainable(model),
        "step_seconds_median": round(step_s, 4),
        "step_seconds_min": round(min(times), 4),
        "seconds_per_sample": round(step_s / batch, 5),
        "seconds_per_sample_min": round(min(times) / batch, 5),
        "rss_before_steps_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "step_peak_rss_increase_mb": round(peak_mb - rss_before, 1),
    }


def run_cpu_subprocess(rank: int, steps: int, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--cpu-case", str(rank), "--steps",
           str(steps), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def param_counts() -> dict:
    """ViT-B-16 at 384x128 on the meta device: trainable counts per LoRA rank and full."""
    spec = get_spec("ViT-B-16")
    result: dict = {"backbone": "ViT-B-16", "image_size": [384, 128],
                    "targets": ALL_TARGETS, "train_norms": False, "train_proj": False,
                    "new_modules": "irra fusion depth 4 (8 heads) + MLM + ITM + ID(11003) + temp"}
    with torch.device("meta"):
        full = build("ViT-B-16", (384, 128), 0, itm=True, ident=True)
    backbone_total = sum(p.numel() for p in full.backbone.parameters())
    result["backbone_params"] = backbone_total
    result["new_module_params"] = sum(p.numel() for p in full.new_parameters())
    result["full_finetune_trainable"] = full.trainable_parameter_count()
    result["lora"] = {}
    for rank in (4, 8, 16, 32, 64):
        with torch.device("meta"):
            model = build("ViT-B-16", (384, 128), rank, itm=True, ident=True)
        adapters = count_trainable(model.backbone)
        closed = expected_lora_params(spec, lora_settings(rank))
        assert adapters == closed, (rank, adapters, closed)
        result["lora"][f"r{rank}"] = {
            "adapter_params": adapters,
            "closed_form": closed,
            "percent_of_backbone": round(100 * adapters / backbone_total, 3),
            "model_trainable": model.trainable_parameter_count(),
        }
    return result


def peak_bf16_flops(name: str) -> float | None:
    for fragment, peak in PEAK_BF16:
        if fragment in name:
            return peak
    return None


def gpu_case(rank: int, device: torch.device, backbone: str = "ViT-B-16", batch: int = 64,
             image_size=(384, 128), warmup: int = 3, steps: int = 10) -> dict:
    """Training-step throughput, MFU and peak memory under bf16 autocast (fp32 weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build(backbone, image_size, rank).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    images, ids, mask = make_batch(batch, image_size, device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = surrogate_loss(model, images, ids, mask)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_s = (time.perf_counter() - t0) / steps
    out = {
        "rank": rank,
        "trainable_params": count_trainable(model),
        "step_seconds": round(step_s, 4),
        "samples_per_s": round(batch / step_s, 1),
        "flops_per_step": flops,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        peak = peak_bf16_flops(props.name)
        out["mfu"] = round(flops / step_s / peak, 4) if peak else None
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["peak_memory_fraction"] = round(torch.cuda.max_memory_allocated(device)
                                            / props.total_memory, 4)
    return out


def gpu_part() -> dict | None:
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    return {
        "device": name,
        "peak_bf16_flops": peak_bf16_flops(name),
        "setting": "ViT-B-16 384x128 batch 64, bf16 autocast, fp32 weights, AdamW step included",
        "full_finetune": gpu_case(0, device),
        "lora_r16": _after_cleanup(lambda: gpu_case(16, device)),
    }


def _after_cleanup(fn):
    """Free the previous case's CUDA memory before running ``fn``."""
    gc.collect()
    torch.cuda.empty_cache()
    return fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed CPU steps per case")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the CPUs here are shared; 0 = torch's "
                             "default)")
    parser.add_argument("--cpu-case", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_case is not None:
        print(json.dumps(cpu_case(args.cpu_case, args.steps)))
        return

    t0 = time.perf_counter()
    result: dict = {
        "torch": torch.__version__,
        "cpu": {
            "setting": "tiny backbone, 128x64, batch 8, irra fusion depth 4, MLM head; "
                       "forward+backward of feats-sum + fused MLM surrogate; fp32",
            "memory_method": "resource.getrusage(RUSAGE_SELF).ru_maxrss in a fresh subprocess "
                             "per case; rss_before_steps from /proc/self/status VmRSS",
            "torch_threads": args.threads or torch.get_num_threads(),
            "full_finetune": run_cpu_subprocess(0, args.steps, args.threads),
            "lora_r16": run_cpu_subprocess(16, args.steps, args.threads),
        },
        "param_counts": param_counts(),
    }
    gpu = gpu_part()
    result["gpu"] = gpu
    if gpu is None:
        result["gpu_reason"] = "torch.cuda.is_available() is False on this machine"
    result["bench_wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
