"""The prepared GPU benchmark: training step, memory, evaluation, data loading, packing; one GPU.

One script for one H100/H200 session (at most 8 minutes, one JSON). It imports only the core library
(models, objective, engine parts, data), torch, torchvision, peft, numpy, PyYAML, Pillow, tqdm and
regex, all of which the GPU machine has; the tokenizer reads open_clip's BPE vocabulary file, which
``bench/gpu_run.sh`` installs from a local wheel (open_clip is never imported). No pretrained
weights: the models have random weights, which do not change the cost of a step. Sections:

* ``peak_matmul``: the bf16 matrix-multiply rate measured on this card (8192^3, the MFU
  denominator).
* ``train_step`` (a): ViT-B/16 at 384x128, batch 64, through the engine's own parts
  (``build_model``, ``build_objective``, ``build_optimizer_for`` of the experiment presets; the
  trainer's step: autocast as the config resolves it, loss, backward, optimiser step) for ``irra``
  (bf16 autocast, full fine-tuning), ``iclf_release`` (fp32 as released, full fine-tuning), ``iclf``
  (LoRA r16, bf16) and ``iclf_full`` (the ``iclf`` preset with ``lora: null``, for (b)). One real
  batch of 64 from the training pipeline (synthetic CUHK-PEDES-sized JPEGs) is reused for every
  step. samples/s over the timed steps, FLOPs of one step from
  ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward), MFU = FLOPs / step time /
  measured peak, peak allocated memory from model build on.
* ``lora_memory`` (b): the ``iclf`` peak memory over ``iclf_full`` (same preset, full fine-tuning).
* ``evaluation`` (c): a test split of CUHK-PEDES size (3,074 images, 6,156 captions) of synthetic
  JPEGs through ``extract_features`` + ``evaluate_features`` (decode, resize, encode both towers
  under the preset's autocast, retrieval metrics), with the trainer's 2 evaluation workers, with 8,
  and from the decoded-image cache.
* ``loader`` (d): the training DataLoader (``TrainPairs`` with the preset's augmentation and MLM
  masking, batch 64, 16 workers, pinned memory) on CUHK-PEDES-sized JPEGs, decoding and from the
  decoded-image cache, against the samples/s the GPU step consumes.
* ``packing`` (e): 1, 2 and 4 concurrent trial processes of the ``iclf`` preset on the one GPU (each
  builds its model and trains on a synthetic batch, as a Ray trial does minus data loading);
  aggregate samples/s over a common time window and device memory in use.

Goals (reported, never asserted): MFU >= 35 % for the ``iclf`` step; LoRA r16 peak memory <= 60 % of
full fine-tuning; packing aggregate >= 1.3x one trial at 2 or 4 per GPU.

``--smoke`` runs every section on the CPU with the tiny backbone at 64x32, fusion depth 1, batch 4
and small sizes in well under a minute (the test suite runs it, so the script cannot rot between GPU
sessions); its figures mean nothing. Progress goes to stderr; the JSON to stdout and, after every
section, to ``--out``.

    bash bench/gpu_run.sh OUT.json       # the GPU session (wheels, time guard); see its header
    python bench/gpu.py [--out FILE] [--budget-s 420] [--sections peak,step,eval,...]
    python bench/gpu.py --smoke [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

SECTIONS = ("peak", "step", "eval", "loader", "packing")
PRESETS = ("irra", "iclf_release", "iclf", "iclf_full")
CUHK_TRAIN_IDS = 11003
CUHK_TEST_IMAGES, CUHK_TEST_CAPTIONS = 3074, 6156
# Dense bf16 tensor-core rates from the vendors' datasheets (FLOP/s), for a second MFU figure.
DATASHEET_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]
GOALS = {"mfu_iclf": 0.35, "lora_memory_fraction": 0.60, "packing_speedup": 1.3}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one run: the GPU session's, or the smoke run's."""

    device: str
    backbone: str
    image_size: tuple[int, int]
    batch: int
    warmup: int
    steps: int
    peak_n: int
    peak_dtype: str
    synth_ids: int  # synthetic identities x 4 images at synth_scale
    synth_scale: float
    eval_images: int
    eval_captions: int
    eval_worker_counts: tuple[int, ...]
    loader_workers: int
    loader_batches: int
    packing_counts: tuple[int, ...]
    packing_warmup: int
    packing_window_s: float
    overrides: tuple[str, ...] = ()


GPU = Settings(device="cuda", backbone="ViT-B-16", image_size=(384, 128), batch=64, warmup=3,
               steps=20, peak_n=8192, peak_dtype="bfloat16", synth_ids=1000, synth_scale=2.0,
               eval_images=CUHK_TEST_IMAGES, eval_captions=CUHK_TEST_CAPTIONS,
               eval_worker_counts=(2, 8), loader_workers=16, loader_batches=600,
               packing_counts=(1, 2, 4), packing_warmup=3, packing_window_s=20.0)
SMOKE = Settings(device="cpu", backbone="tiny", image_size=(64, 32), batch=4, warmup=1, steps=2,
                 peak_n=256, peak_dtype="float32", synth_ids=12, synth_scale=1.0,
                 eval_images=40, eval_captions=81, eval_worker_counts=(0, 2), loader_workers=2,
                 loader_batches=6, packing_counts=(1, 2), packing_warmup=1,
                 packing_window_s=1.0, overrides=("fusion.heads=4", "fusion.depth=1"))


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------- building blocks


def preset_config(preset: str, s: Settings, data_root: str):
    """The experiment preset with random weights at the run's sizes (``iclf_full``: ``iclf`` with
    full fine-tuning)."""
    from iclf.config import load_config

    name = "iclf" if preset == "iclf_full" else preset
    over = ["model.pretrained=null", "model.build_pretrained=false", f"model.backbone={s.backbone}",
            f"model.image_size=[{s.image_size[0]},{s.image_size[1]}]", f"device={s.device}",
            f"data.root={data_root}", f"data.batch_size={s.batch}", "data.image_cache=off",
            *s.overrides]
    if preset == "iclf_full":
        over.append("lora=null")
    return load_config(ROOT / "experiments" / "presets" / f"{name}.yaml", over)


def uses_bf16(cfg, device: torch.device) -> bool:
    """The trainer's precision rule."""
    p = cfg.training.precision
    return p == "bf16" or (p == "auto" and device.type == "cuda")


def build_parts(cfg, num_classes: int, device: torch.device):
    from iclf.engine.seed import seed_everything
    from iclf.engine.trainer import build_model, build_objective, build_optimizer_for

    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes=num_classes).to(device)
    model.train()
    return model, build_objective(cfg), build_optimizer_for(cfg, model)


def make_step(cfg, model, objective, optimizer, batch, device: torch.device):
    """The trainer's optimisation step on a fixed batch."""
    from iclf.engine.evaluate import autocast_context

    bf16 = uses_bf16(cfg, device)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with autocast_context(device, bf16):
            loss = objective(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.training.grad_clip)
        optimizer.step()

    return step


def synthetic_batch(batch: int, image_size: tuple[int, int], num_classes: int, seed: int = 0):
    """Random normalised images and captions of 10-40 tokens with MLM masks (no tokenizer)."""
    from iclf.data.masking import mask_tokens
    from iclf.tokenizer import EOT_ID, SOT_ID

    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    masked, labels = torch.zeros_like(ids), torch.zeros_like(ids)
    for i in range(batch):
        n = int(torch.randint(10, 41, (1,), generator=g))
        ids[i, 0], ids[i, n + 1] = SOT_ID, EOT_ID
        ids[i, 1:n + 1] = torch.randint(1, 40000, (n,), generator=g)
        masked[i], labels[i] = mask_tokens(ids[i], g)
    pids = torch.randint(0, num_classes, (batch // 2,), generator=g).repeat_interleave(2)[:batch]
    return {"images": torch.randn(batch, 3, *image_size, generator=g), "caption_ids": masked,
            "mlm_ids": masked, "mlm_labels": labels, "pids": pids,
            "image_ids": torch.arange(batch)}


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def datasheet_peak(name: str) -> float | None:
    for fragment, peak in DATASHEET_BF16:
        if fragment in name:
            return peak
    return None


# ---------------------------------------------------------------------------------------- sections


def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "device": str(device)}
    for name in ("torchvision", "peft", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            info[name] = f"unavailable: {e}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count,
                    cuda=torch.version.cuda, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    float32_matmul_precision=torch.get_float32_matmul_precision())
    try:
        from iclf.tokenizer import bpe_vocab_path

        info["bpe_vocab"] = str(bpe_vocab_path())
    except FileNotFoundError as e:
        info["bpe_vocab"] = f"missing: {e}"
    info["git_commit"] = os.environ.get("ICLF_GIT_COMMIT")  # the device machine gets no .git
    if not info["git_commit"]:
        try:
            info["git_commit"] = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, capture_output=True,
                timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["git_commit"] = None
    return info


def peak_matmul(s: Settings, device: torch.device) -> dict:
    """Mean rate of ten n^3 products after three warm-ups, on random data."""
    dtype = getattr(torch, s.peak_dtype)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(s.peak_n, s.peak_n, device=device, dtype=dtype, generator=g)
    b = torch.randn(s.peak_n, s.peak_n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - t0) / reps
    out = {"n": s.peak_n, "dtype": s.peak_dtype, "seconds": round(seconds, 6),
           "flops_per_s": 2 * s.peak_n ** 3 / seconds}
    if device.type == "cuda":
        out["datasheet_bf16_flops_per_s"] = datasheet_peak(torch.cuda.get_device_name(device))
    return out


def write_dataset(root: Path, s: Settings) -> dict:
    """Synthetic CUHK-PEDES JPEGs: every image is a training image, and the test split is a copy
    of the first ``eval_images`` of them with ``eval_captions`` captions (the real test split's
    size)."""
    from iclf.data.synthetic import write_synthetic

    t0 = time.perf_counter()
    write_synthetic(root, "CUHK-PEDES", ids=s.synth_ids, images_per_id=4, seed=0,
                    scale=s.synth_scale)
    ann = root / "CUHK-PEDES" / "reid_raw.json"
    records = json.loads(ann.read_text())
    train = [dict(r, split="train") for r in records]
    if len(train) < s.eval_images:
        raise ValueError(f"{len(train)} synthetic images, the evaluation needs {s.eval_images}")
    test = [dict(r, split="test", captions=list(r["captions"])) for r in train[:s.eval_images]]
    extra = s.eval_captions - sum(len(r["captions"]) for r in test)
    for i in range(extra):  # the real test split has a few images with three captions
        test[i]["captions"].append(test[i]["captions"][0] + " the picture is a little dark.")
    val = [dict(r, split="val") for r in train[:4]]
    ann.write_text(json.dumps(train + val + test))
    return {"images": len(train), "scale": s.synth_scale,
            "seconds": round(time.perf_counter() - t0, 2)}


def one_batch(cfg, data, tokenizer) -> dict:
    """One batch of the real training pipeline (decoded JPEGs, augmentation, MLM masking)."""
    from iclf.data.datasets import TrainPairs, collate
    from iclf.data.transforms import build_train_transform

    d = cfg.data
    pairs = TrainPairs(data.train[:cfg.data.batch_size],
                       build_train_transform(tuple(cfg.model.image_size)), tokenizer,
                       mask_rate=d.masking.rate, mask_prob=d.masking.mask_prob,
                       random_prob=d.masking.random_prob,
                       mask_global_text=d.masking.mask_global_text, seed=0)
    torch.manual_seed(0)
    return collate([pairs[i] for i in range(len(pairs))])


def train_step_case(preset: str, s: Settings, device: torch.device, data, batch_cpu: dict,
                    peak: float) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from iclf.engine.trainer import count_params

    cfg = preset_config(preset, s, data.root)
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_build = time.perf_counter()
    model, objective, optimizer = build_parts(cfg, CUHK_TRAIN_IDS if device.type == "cuda"
                                              else data.num_train_ids, device)
    build_s = time.perf_counter() - t_build
    batch = to_device(batch_cpu, device)
    step = make_step(cfg, model, objective, optimizer, batch, device)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(s.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(s.steps):
        step()
    sync(device)
    step_s = (time.perf_counter() - t0) / s.steps
    trainable, total = count_params(model)
    out = {"precision": "bf16 autocast" if uses_bf16(cfg, device) else "fp32",
           "lora_rank": cfg.lora.rank if cfg.lora else 0,
           "fusion": f"{cfg.fusion.style} depth {cfg.fusion.depth}",
           "losses": {k: v for k, v in dataclasses.asdict(cfg.losses.weights).items() if v},
           "trainable_params": trainable, "total_params": total, "batch": s.batch,
           "steps": s.steps, "step_seconds": round(step_s, 5),
           "samples_per_s": round(s.batch / step_s, 1), "flops_per_step": flops,
           "mfu": round(flops / step_s / peak, 4), "build_seconds": round(build_s, 2)}
    if device.type == "cuda":
        sheet = datasheet_peak(torch.cuda.get_device_name(device))
        out["mfu_vs_datasheet"] = round(flops / step_s / sheet, 4) if sheet else None
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
    else:
        out["peak_memory_gib"] = None  # no per-case peak on the CPU (smoke run)
    del model, objective, optimizer, batch, step
    free_memory(device)
    return out


def lora_memory(steps: dict) -> dict:
    def frac(a: str, b: str):
        pa, pb = steps.get(a, {}).get("peak_memory_gib"), steps.get(b, {}).get("peak_memory_gib")
        return round(pa / pb, 4) if pa and pb else None

    return {"iclf_lora_r16_over_iclf_full_ft": frac("iclf", "iclf_full"),
            "iclf_lora_r16_over_irra": frac("iclf", "irra"),
            "iclf_lora_r16_over_iclf_release_fp32": frac("iclf", "iclf_release"),
            "goal": f"iclf_lora_r16_over_iclf_full_ft <= {GOALS['lora_memory_fraction']}"}


def evaluation(s: Settings, device: torch.device, data, cache_dir: Path) -> dict:
    from iclf.data.cache import ensure_image_cache
    from iclf.data.datasets import tokenize_all
    from iclf.data.pedes import EvalSet
    from iclf.data.transforms import build_test_transform
    from iclf.engine.evaluate import extract_features
    from iclf.metrics import evaluate_features
    from iclf.tokenizer import Tokenizer

    cfg = preset_config("iclf", s, data.root)
    model, _, _ = build_parts(cfg, data.num_train_ids, device)
    tokenizer = Tokenizer()
    transform = build_test_transform(tuple(cfg.model.image_size))
    bf16 = uses_bf16(cfg, device)
    test = data.test
    t0 = time.perf_counter()
    cache = ensure_image_cache(data, s.image_size, cache_dir, splits=("test",),
                               num_workers=min(16, os.cpu_count() or 1), progress=False)["test"]
    cache_build_s = time.perf_counter() - t0
    warm = EvalSet(test.image_paths[:256], test.image_pids[:256], test.captions[:256],
                   test.caption_pids[:256])
    extract_features(model, warm, transform=transform, tokenizer=tokenizer,
                     batch_size=cfg.evaluation.batch_size, device=device, bf16=bf16)

    def run(workers: int, image_cache=None) -> dict:
        sync(device)
        t0 = time.perf_counter()
        txt, img = extract_features(model, test, transform=transform, tokenizer=tokenizer,
                                    batch_size=cfg.evaluation.batch_size, device=device,
                                    bf16=bf16, num_workers=workers, image_cache=image_cache)
        t1 = time.perf_counter()
        metrics = evaluate_features(txt, img, torch.as_tensor(test.caption_pids),
                                    torch.as_tensor(test.image_pids))
        t2 = time.perf_counter()
        return {"workers": workers, "from_cache": image_cache is not None,
                "features_seconds": round(t1 - t0, 3), "metrics_seconds": round(t2 - t1, 3),
                "total_seconds": round(t2 - t0, 3), "R1": round(metrics["R1"], 4)}

    runs = [run(w) for w in s.eval_worker_counts]
    runs.append(run(s.eval_worker_counts[0], cache))
    t0 = time.perf_counter()
    tokenize_all(tokenizer, test.captions)
    tokenize_s = time.perf_counter() - t0
    del model
    free_memory(device)
    return {"images": len(test.image_paths), "captions": len(test.captions),
            "tokenize_seconds": round(tokenize_s, 3),  # part of every run's features_seconds
            "batch_size": cfg.evaluation.batch_size,
            "precision": "bf16 autocast" if bf16 else "fp32",
            "model": "iclf preset (LoRA r16), random weights",
            "pipeline": "iclf.engine.evaluate.extract_features (JPEG decode or cache row, resize, "
                        "normalise, both towers) + iclf.metrics.evaluate_features (on the CPU, as "
                        "the trainer does)",
            "cache_build_seconds": round(cache_build_s, 2), "runs": runs,
            "same_R1_from_cache": runs[-1]["R1"] == runs[0]["R1"]}


def loader(s: Settings, device: torch.device, data, cache_dir: Path, gpu_rates: dict) -> dict:
    from torch.utils.data import DataLoader, RandomSampler

    from iclf.data.cache import ensure_image_cache
    from iclf.data.datasets import TrainPairs, collate
    from iclf.data.transforms import build_train_transform
    from iclf.tokenizer import Tokenizer

    cfg = preset_config("iclf", s, data.root)
    d = cfg.data
    t0 = time.perf_counter()
    cache = ensure_image_cache(data, s.image_size, cache_dir, splits=("train",),
                               num_workers=min(16, os.cpu_count() or 1), progress=False)["train"]
    cache_build_s = time.perf_counter() - t0
    tokenizer = Tokenizer()

    def run(image_cache) -> dict:
        pairs = TrainPairs(data.train, build_train_transform(tuple(cfg.model.image_size)),
                           tokenizer, mask_rate=d.masking.rate, mask_prob=d.masking.mask_prob,
                           random_prob=d.masking.random_prob,
                           mask_global_text=d.masking.mask_global_text, seed=0,
                           image_cache=image_cache)
        sampler = RandomSampler(pairs, replacement=True, num_samples=s.batch * s.loader_batches,
                                generator=torch.Generator().manual_seed(0))
        dl = DataLoader(pairs, batch_size=s.batch, sampler=sampler, num_workers=s.loader_workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", drop_last=True)
        t0 = time.perf_counter()
        first = None
        n = 0
        for i, batch in enumerate(dl):
            if i == 0:
                first = time.perf_counter()
            else:
                n += batch["images"].shape[0]
        end = time.perf_counter()
        rate = n / (end - first) if end > first else float("nan")
        return {"from_cache": image_cache is not None, "workers": s.loader_workers,
                "batches": s.loader_batches, "first_batch_seconds": round(first - t0, 3),
                "samples_per_s": round(rate, 1),
                "samples_per_s_per_worker": round(rate / max(s.loader_workers, 1), 1)}

    runs = [run(None), run(cache)]
    out = {"dataset_images": len(cache), "dataset_pairs": len(data.train), "batch": s.batch,
           "image_size": list(s.image_size), "cache_build_seconds": round(cache_build_s, 2),
           "runs": runs, "note": "steady rate after the first batch, JPEGs in the page cache; the "
           "main process (collate, pin_memory) bounds the rate when the workers are fast"}
    for preset, rate in gpu_rates.items():
        out[f"gpu_step_samples_per_s_{preset}"] = rate
        out[f"decoding_over_gpu_{preset}"] = round(runs[0]["samples_per_s"] / rate, 2)
        out[f"cache_over_gpu_{preset}"] = round(runs[1]["samples_per_s"] / rate, 2)
        per_worker = runs[0]["samples_per_s_per_worker"]
        out[f"decoding_workers_needed_{preset}"] = math.ceil(rate / per_worker) if per_worker \
            else None
    return out


# ------------------------------------------------------------------------------------------ packing


def trial_worker(spec: dict) -> dict:
    """One packed trial (a subprocess): build the ``iclf`` preset, warm up, wait for the common
    start, then train on a fixed synthetic batch for the window; prints its JSON."""
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["settings"].items()})
    device = torch.device(s.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    cfg = preset_config("iclf", s, spec["data_root"])
    classes = CUHK_TRAIN_IDS
    model, objective, optimizer = build_parts(cfg, classes, device)
    batch = to_device(synthetic_batch(s.batch, s.image_size, classes, seed=spec["index"]), device)
    step = make_step(cfg, model, objective, optimizer, batch, device)
    for _ in range(s.packing_warmup):
        step()
    sync(device)
    ready = Path(spec["sync_dir"]) / f"ready-{spec['index']}"
    ready.write_text("ready")
    go = Path(spec["sync_dir"]) / "go"
    deadline = time.monotonic() + 600
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no start signal")
        time.sleep(0.01)
    steps = 0
    t0 = time.perf_counter()
    while True:
        step()
        sync(device)
        steps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= s.packing_window_s:
            break
    out = {"index": spec["index"], "steps": steps, "seconds": round(elapsed, 3),
           "samples_per_s": round(steps * s.batch / elapsed, 2)}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
    else:
        out["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return out


def packing_run(n: int, s: Settings, device: torch.device, data_root: str,
                timeout_s: float) -> dict:
    sync_dir = Path(tempfile.mkdtemp(prefix="iclf-pack-"))
    procs = []
    free_memory(device)
    base_used = _device_used(device)  # before any trial: what the trials use is above this
    try:
        for i in range(n):
            spec = {"settings": dataclasses.asdict(s), "data_root": data_root, "index": i,
                    "sync_dir": str(sync_dir)}
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--trial-worker", json.dumps(spec)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        t_start = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while len(list(sync_dir.glob("ready-*"))) < n:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError("a packed trial ended or stalled before it was ready: "
                                   + _tails(procs))
            time.sleep(0.05)
        startup_s = time.perf_counter() - t_start
        (sync_dir / "go").write_text("go")
        peak_used = _device_used(device)
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise RuntimeError("packed trials overran their time: " + _tails(procs))
            peak_used = max(peak_used, _device_used(device))
            time.sleep(0.2)
        results = []
        for p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"a packed trial failed (exit {p.returncode}): {err[-1500:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(sync_dir, ignore_errors=True)
    out = {"trials": n, "startup_seconds": round(startup_s, 1),
           "aggregate_samples_per_s": round(sum(r["samples_per_s"] for r in results), 1),
           "per_trial": results}
    if device.type == "cuda":
        out["device_memory_in_use_gib"] = round((peak_used - base_used) / 2**30, 2)
    return out


def _device_used(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    free, total = torch.cuda.mem_get_info(device)
    return total - free


def _tails(procs) -> str:
    tails = []
    for p in procs:
        if p.poll() is not None:
            _, err = p.communicate()
            tails.append(f"exit {p.returncode}: {err[-800:]}")
    return " | ".join(tails) or "no trial exited"


def packing(s: Settings, device: torch.device, data_root: str, time_left) -> dict:
    runs = []
    skipped = []
    for n in s.packing_counts:
        need = 45 + 12 * n + s.packing_window_s if device.type == "cuda" else 0
        if time_left() < need:
            skipped.append(n)
            continue
        log(f"packing: {n} concurrent trial process(es)")
        runs.append(packing_run(n, s, device, data_root, timeout_s=max(need * 2, 120)))
    base = next((r["aggregate_samples_per_s"] for r in runs if r["trials"] == 1), None)
    for r in runs:
        r["speedup_over_one"] = round(r["aggregate_samples_per_s"] / base, 3) if base else None
    out = {"preset": "iclf", "batch": s.batch, "window_seconds": s.packing_window_s,
           "data": "a fixed synthetic batch per trial on the device (no data loading)",
           "runs": runs}
    if skipped:
        out["skipped_for_time"] = skipped
    return out


# -------------------------------------------------------------------------------------------- main


def summary(result: dict, judge: bool = True) -> dict:
    """The three goals against this run's figures (``met`` is None for a smoke run)."""
    steps = result.get("train_step") or {}
    mfu = steps.get("iclf", {}).get("mfu")
    frac = (result.get("lora_memory") or {}).get("iclf_lora_r16_over_iclf_full_ft")
    runs = (result.get("packing") or {}).get("runs", [])
    speedups = {r["trials"]: r.get("speedup_over_one") for r in runs if r["trials"] > 1}
    best = max((v for v in speedups.values() if v is not None), default=None)

    def met(value, goal, above=True):
        if value is None or not judge:
            return None
        return value >= goal if above else value <= goal

    return {"mfu_iclf": {"value": mfu, "goal": f">= {GOALS['mfu_iclf']}",
                         "met": met(mfu, GOALS["mfu_iclf"])},
            "lora_memory_fraction": {"value": frac, "goal": f"<= {GOALS['lora_memory_fraction']}",
                                     "met": met(frac, GOALS["lora_memory_fraction"], False)},
            "packing_speedup": {"value": speedups, "goal": f">= {GOALS['packing_speedup']} at 2 "
                                "or 4 trials per GPU", "met": met(best, GOALS["packing_speedup"])}}


def third_party_modules() -> list[str]:
    names = {m.split(".")[0] for m in sys.modules}
    return sorted(n for n in names - set(sys.stdlib_module_names)
                  if n != "iclf" and not n.startswith("_") and n != "__main__")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model on the CPU, small sizes (the test suite's check)")
    parser.add_argument("--out", default=None,
                        help="also write the JSON here (after every section)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip what would not finish within this many seconds (default 420)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--trial-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.trial_worker is not None:
        print(json.dumps(trial_worker(json.loads(args.trial_worker))), flush=True)
        return 0
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    s = SMOKE if args.smoke else GPU
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device is visible; the GPU benchmark needs one (use --smoke to check "
              "the script on the CPU)", file=sys.stderr)
        return 2
    device = torch.device(s.device)
    if args.smoke:
        torch.set_num_threads(1)  # a shared 2-core machine: no thread oversubscription
    start = time.perf_counter()

    def time_left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    result: dict = {"benchmark": "bench/gpu.py", "mode": "smoke (CPU, tiny model: figures mean "
                    "nothing)" if args.smoke else "gpu",
                    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "settings": dataclasses.asdict(s), "goals": dict(GOALS), "errors": {},
                    "skipped": {}}

    def emit() -> None:
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(out)

    def section(name: str, need_s: float, fn) -> None:
        if time_left() < need_s:
            result["skipped"][name] = f"{time_left():.0f} s left of the budget, needs ~{need_s:.0f}"
            log(f"{name}: skipped ({result['skipped'][name]})")
            return
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others
            result["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            log(f"{name}: FAILED {result['errors'][name]}")
        log(f"{name}: {time.perf_counter() - t0:.1f} s")
        emit()

    gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="iclf-gpu-bench-") as tmp:
        tmp_path = Path(tmp)
        try:
            result["machine"] = machine_info(device)
        except Exception as e:  # noqa: BLE001 - reported, the benchmark goes on
            result["errors"]["machine"] = f"{type(e).__name__}: {e}"[:2000]
        peak = {"flops_per_s": None}
        if "peak" in sections:
            section("peak_matmul", 10 if gpu else 0, lambda: peak_matmul(s, device))
            peak = result.get("peak_matmul", peak)
        section("data", 30 if gpu else 0, lambda: write_dataset(tmp_path / "data", s))
        if "data" not in result:
            print(json.dumps(result, indent=2))
            return 1
        from iclf.data.pedes import load_pedes
        from iclf.tokenizer import Tokenizer

        with contextlib.redirect_stdout(sys.stderr):
            data = load_pedes("CUHK-PEDES", tmp_path / "data")
        peak_rate = peak.get("flops_per_s") or datasheet_peak(
            torch.cuda.get_device_name(device) if gpu else "") or float("nan")

        if "step" in sections:
            batch_cpu = one_batch(preset_config("iclf", s, data.root), data, Tokenizer())
            steps: dict = {}

            def run_steps() -> dict:
                for preset in PRESETS:
                    if time_left() < (40 if gpu else 0):
                        result["skipped"][f"train_step.{preset}"] = "time budget"
                        continue
                    log(f"train step: {preset}")
                    try:
                        steps[preset] = train_step_case(preset, s, device, data, batch_cpu,
                                                        peak_rate)
                    except Exception as e:  # noqa: BLE001 - e.g. out of memory for one preset
                        result["errors"][f"train_step.{preset}"] = f"{type(e).__name__}: {e}"[:2000]
                        free_memory(device)
                return steps

            section("train_step", 60 if gpu else 0, run_steps)
            result["lora_memory"] = lora_memory(steps)
        gpu_rates = {p: r["samples_per_s"] for p, r in (result.get("train_step") or {}).items()
                     if p in ("iclf", "irra")}
        cache_dir = tmp_path / "cache"
        if "eval" in sections:
            section("evaluation", 40 if gpu else 0, lambda: evaluation(s, device, data, cache_dir))
        if "loader" in sections:
            section("loader", 40 if gpu else 0,
                    lambda: loader(s, device, data, cache_dir, gpu_rates))
        if "packing" in sections:
            section("packing", 60 if gpu else 0,
                    lambda: packing(s, device, data.root, time_left))
    result["summary"] = summary(result, judge=not args.smoke)
    result["third_party_modules"] = third_party_modules()
    emit()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
