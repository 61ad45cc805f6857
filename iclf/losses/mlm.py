"""Masked language modelling loss (IRRA "Implicit Relation Reasoning"), method.md section 2.3."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iclf.precision import fp32_region


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the masked positions only, method.md 2.3.

    ``logits`` [M, V] are the MLM head outputs at the M masked positions and ``targets`` [M]
    the original token ids there. This equals IRRA's cross-entropy over all B*77 positions
    with ``ignore_index=0`` (label 0 marks an unmasked position).
    """
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"mlm_loss: expected logits [M, V] and targets [M]; got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError(
            "mlm_loss: no masked positions in the batch (mlm_labels are all 0); the masking "
            "step must mask at least one token per caption"
        )
    with fp32_region(logits):
        return F.cross_entropy(logits.float(), targets)
