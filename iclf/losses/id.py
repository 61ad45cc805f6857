"""Identity classification loss with one classifier shared by both modalities, method.md 2.4."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iclf.precision import fp32_region


def id_loss(logits_img: torch.Tensor, logits_txt: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    """L_id = 1/2 [CE(W i, p) + CE(W t, p)] on the classifier logits [B, C] of each modality."""
    if logits_img.dim() != 2 or logits_img.shape != logits_txt.shape:
        raise ValueError(
            f"id_loss: logits_img and logits_txt must both be [B, C]; got "
            f"{tuple(logits_img.shape)} and {tuple(logits_txt.shape)}"
        )
    if pids.dim() != 1 or pids.shape[0] != logits_img.shape[0]:
        raise ValueError(
            f"id_loss: pids must have shape [{logits_img.shape[0]}]; got {tuple(pids.shape)}"
        )
    with fp32_region(logits_img):
        return 0.5 * (F.cross_entropy(logits_img.float(), pids)
                      + F.cross_entropy(logits_txt.float(), pids))
