"""Similarity Distribution Matching (IRRA's main loss), method.md section 2.2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iclf.losses._checks import check_paired_features, check_pids, same_identity
from iclf.precision import fp32_region


def sdm_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    pids: torch.Tensor,
    logit_scale: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    """KL(P || q) in both directions, summed (not averaged), method.md 2.2.

    q is the row-normalised same-identity matrix; P_i2t = softmax(s i t^T) and
    P_t2i = softmax(s t i^T) over rows, with i, t the L2-normalised features (normalised here).
    Each direction is mean_a sum_b P[a, b] (log P[a, b] - log(q[a, b] + eps)). Computed in fp32,
    also under autocast (:mod:`iclf.precision`), as IRRA computes it.
    """
    check_paired_features(image_feat, text_feat, "sdm_loss")
    check_pids(pids, image_feat.shape[0], "sdm_loss")
    with fp32_region(image_feat):
        image = F.normalize(image_feat.float(), dim=-1)
        text = F.normalize(text_feat.float(), dim=-1)
        sim = image @ text.t()  # (B, B)

        labels = same_identity(pids).to(sim.dtype)
        target = labels / labels.sum(dim=1, keepdim=True)  # symmetric labels: row == column sums
        log_target = torch.log(target + eps)

        total = sim.new_zeros(())
        for logits in (logit_scale * sim, logit_scale * sim.t()):
            log_p = F.log_softmax(logits, dim=1)
            kl = (log_p.exp() * (log_p - log_target)).sum(dim=1)
            total = total + kl.mean()
        return total
