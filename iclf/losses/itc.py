"""Instance-level image-text contrastive loss (InfoNCE), method.md section 2.1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iclf.losses._checks import check_paired_features
from iclf.precision import fp32_region


def itc_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Symmetric InfoNCE with diagonal targets (not identity-aware), method.md 2.1.

    L = 1/2 [CE(s i t^T, diag) + CE(s t i^T, diag)], where i and t are the L2-normalised
    global features ([B, D] each, normalised here) and ``s`` the fixed logit scale (50 in ICLF).
    Computed in fp32, also under autocast (:mod:`iclf.precision`).
    """
    check_paired_features(image_feat, text_feat, "itc_loss")
    with fp32_region(image_feat):
        image = F.normalize(image_feat.float(), dim=-1)
        text = F.normalize(text_feat.float(), dim=-1)
        logits = logit_scale * image @ text.t()  # (B, B): image rows, text columns
        targets = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
