"""Feature extraction and retrieval evaluation of one split (method.md 1.3, 5)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.utils.data import DataLoader

from iclf.metrics import evaluate_features, retrieval_metrics


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
        img = torch.nn.functional.normalize(torch.cat(image_feats), dim=-1)
        txt = torch.nn.functional.normalize(torch.cat(text_feats), dim=-1)
        return txt, img
    finally:
        model.train(was_training)


def evaluate_split(model: torch.nn.Module, eval_set: Any, **kwargs: Any) -> dict[str, float]:
    """Text-to-image R1/R5/R10/mAP/mINP (percent) of one split."""
    txt, img = extract_features(model, eval_set, **kwargs)
    # streams the similarity matrix in chunks of queries: bounded memory at ICFG-PEDES size
    return evaluate_features(txt, img, torch.as_tensor(eval_set.caption_pids),
                             torch.as_tensor(eval_set.image_pids))


def chance_levels(query_pids: Any, gallery_pids: Any, seed: int = 0) -> dict[str, float]:
    """The metrics of a random ranking of this split (what "far above chance" is measured against)."""
    q = torch.as_tensor(query_pids)
    g = torch.as_tensor(gallery_pids)
    gen = torch.Generator().manual_seed(seed)
    sim = torch.rand(len(q), len(g), generator=gen)
    return retrieval_metrics(sim, q, g)
