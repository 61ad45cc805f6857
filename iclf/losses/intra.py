"""Intra-modal soft-target contrastive loss (RaSa-style i2i / t2t), method.md section 2.5."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iclf.losses._checks import check_paired_features, check_pids, same_identity
from iclf.precision import fp32_region


def _soft_target_ce(feat: torch.Tensor, identity_target: torch.Tensor,
                    temp: torch.Tensor | float, alpha: float) -> torch.Tensor:
    """mean_a -sum_b Y[a, b] log_softmax(S)[a, b] with S = f f^T / temp, diagonal included."""
    logits = feat @ feat.t() / temp  # (B, B)
    log_p = F.log_softmax(logits, dim=1)
    with torch.no_grad():  # soft targets from the same features, no momentum copy
        target = alpha * log_p.exp() + (1.0 - alpha) * identity_target
    return -(target * log_p).sum(dim=1).mean()


def intra_modal_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    pids: torch.Tensor,
    temp: torch.Tensor | float,
    alpha: float = 0.4,
) -> torch.Tensor:
    """L_cl = 1/2 [CE(Y_ii, S_ii) + CE(Y_tt, S_tt)], method.md 2.5.

    S_ii = i i^T / temp and S_tt = t t^T / temp on the L2-normalised features (normalised here).
    Targets Y = alpha * softmax(S) + (1 - alpha) * y, where y is the row-normalised
    same-identity matrix; Y carries no gradient, while the logits pass gradients to the
    features and to ``temp`` (a learnable, unclamped scalar in ICLF). Computed in fp32, also
    under autocast (:mod:`iclf.precision`).
    """
    check_paired_features(image_feat, text_feat, "intra_modal_loss")
    check_pids(pids, image_feat.shape[0], "intra_modal_loss")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"intra_modal_loss: alpha must be in [0, 1]; got {alpha}")
    with fp32_region(image_feat):
        image = F.normalize(image_feat.float(), dim=-1)
        text = F.normalize(text_feat.float(), dim=-1)
        if isinstance(temp, torch.Tensor):
            temp = temp.float()
        labels = same_identity(pids).to(image.dtype)
        identity_target = labels / labels.sum(dim=1, keepdim=True)
        loss_ii = _soft_target_ce(image, identity_target, temp, alpha)
        loss_tt = _soft_target_ce(text, identity_target, temp, alpha)
        return 0.5 * (loss_ii + loss_tt)
