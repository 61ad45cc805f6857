"""Feature extraction and retrieval evaluation of one split (method.md 1.3, 5)."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from iclf.metrics import Ranking, evaluate_features, rank_and_evaluate, retrieval_metrics
from iclf.precision import fp32_region


def use_bf16(precision: str, device: torch.device) -> bool:
    """The precision rule (method.md, decisions): bf16 autocast over fp32 master weights when
    ``training.precision`` is ``bf16``, or ``auto`` on a GPU; fp32 otherwise."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op elsewhere (fp32 on the CPU)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_features(model: torch.nn.Module, eval_set: Any, *, transform: Any, tokenizer: Any,
                     batch_size: int, device: torch.device, bf16: bool = False,
                     num_workers: int = 0, image_cache: Any = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised global text and image features of an evaluation split, batched, in eval mode.

    The encoders run under bf16 autocast when ``bf16`` is set (on CUDA); the features are cast to fp32
    and normalised outside it, and the similarity (:func:`iclf.metrics.cosine_similarity`) is fp32.
    ``image_cache``: the split's :class:`iclf.data.cache.ImageCache` to read the resized images from
    instead of decoding the JPEGs (the same features)."""
    from iclf.data.datasets import ImageSet, TextSet

    was_training = model.training
    model.eval()
    try:
        images = ImageSet(eval_set.image_paths, eval_set.image_pids, transform,
                          image_cache=image_cache)
        image_loader = DataLoader(images,
                                  batch_size=batch_size, shuffle=False, num_workers=num_workers)
        text_loader = DataLoader(TextSet(eval_set.captions, eval_set.caption_pids, tokenizer),
                                 batch_size=batch_size, shuffle=False, num_workers=0)
        image_feats, text_feats = [], []
        with autocast_context(device, bf16):
            for batch in image_loader:
                images = batch["images"].to(device, non_blocking=True)
                image_feats.append(model.backbone.encode_image(images).float().cpu())
            for batch in text_loader:
                ids = batch["caption_ids"].to(device, non_blocking=True)
                text_feats.append(model.backbone.encode_text(ids).float().cpu())
        with fp32_region():  # the features are on the CPU by now
            img = torch.nn.functional.normalize(torch.cat(image_feats).float(), dim=-1)
            txt = torch.nn.functional.normalize(torch.cat(text_feats).float(), dim=-1)
        return txt, img
    finally:
        model.train(was_training)


def evaluate_split(model: torch.nn.Module, eval_set: Any, **kwargs: Any) -> dict[str, float]:
    """Text-to-image R1/R5/R10/mAP/mINP (percent) of one split."""
    txt, img = extract_features(model, eval_set, **kwargs)
    # streams the similarity matrix in chunks of queries: bounded memory at ICFG-PEDES size
    return evaluate_features(txt, img, torch.as_tensor(eval_set.caption_pids),
                             torch.as_tensor(eval_set.image_pids))


def evaluate_split_ranked(model: torch.nn.Module, eval_set: Any, queries: Sequence[int],
                          k: int = 10, **kwargs: Any) -> tuple[dict[str, float], Ranking]:
    """:func:`evaluate_split` plus the top-``k`` gallery images of the chosen ``queries`` (caption
    indices), from the same pass (:func:`iclf.metrics.rank_and_evaluate`)."""
    txt, img = extract_features(model, eval_set, **kwargs)
    return rank_and_evaluate(txt, img, torch.as_tensor(eval_set.caption_pids),
                             torch.as_tensor(eval_set.image_pids), queries, k=k)


def chance_levels(query_pids: Any, gallery_pids: Any, seed: int = 0) -> dict[str, float]:
    """The metrics of a random ranking of this split (what "far above chance" is measured against)."""
    q = torch.as_tensor(query_pids)
    g = torch.as_tensor(gallery_pids)
    gen = torch.Generator().manual_seed(seed)
    sim = torch.rand(len(q), len(g), generator=gen)
    return retrieval_metrics(sim, q, g)


def evaluate_run(run: str | Path, *, which: str = "best", split: str = "test",
                 device: str | None = None, root_dir: str | None = None) -> dict[str, float]:
    """Rebuild a run from its config and evaluate a checkpoint (``best``: the selected one;
    ``last``) on a split.

    ``run`` is a run directory (its ``configs.yaml``) or the config file itself: one that
    ``iclf train`` wrote (weights in ``checkpoint/``) or a published IRRA/ICLF one (``best.pth``),
    see :mod:`iclf.engine.runs`. ``root_dir`` replaces the config's data root.
    """
    from iclf.data.transforms import build_test_transform
    from iclf.engine.runs import open_run
    from iclf.engine.seed import seed_everything
    # the builders live with the loop that uses them; imported here, not at the top (trainer
    # imports this module)
    from iclf.engine.trainer import build_model, prepare_data, resolve_device
    from iclf.tokenizer import Tokenizer

    run = Path(run)
    opened = open_run(run / "configs.yaml" if run.is_dir() else run, which=which,
                      root_dir=root_dir)  # refuses a non-run config before any data is touched
    cfg = opened.config
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    dev = resolve_device(cfg.device)
    data = prepare_data(cfg)
    seed_everything(cfg.seed, cfg.training.deterministic)
    model = build_model(cfg, num_classes=data.num_train_ids)
    opened.load_weights(model)
    model = model.to(dev)
    eval_set = data.test if split == "test" else data.val
    return evaluate_split(model, eval_set, transform=build_test_transform(tuple(cfg.model.image_size)),
                          tokenizer=Tokenizer(), batch_size=cfg.evaluation.batch_size, device=dev,
                          bf16=use_bf16(cfg.training.precision, dev))
