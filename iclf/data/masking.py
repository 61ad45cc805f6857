"""MLM token masking for Implicit Relation Reasoning (method.md 2.3)."""

from __future__ import annotations

import torch

from iclf.tokenizer import MASK_ID, PAD_ID


def check_masking(rate: float, mask_prob: float, random_prob: float) -> None:
    """Raise ValueError unless the masking probabilities are valid."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"masking rate must be in [0, 1], got {rate}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if not 0.0 <= random_prob <= 1.0 or mask_prob + random_prob > 1.0 + 1e-12:
        raise ValueError(f"random_prob must be in [0, 1] with mask_prob + random_prob <= 1, "
                         f"got mask_prob={mask_prob}, random_prob={random_prob}")


def mask_tokens(
    ids: torch.Tensor,
    generator: torch.Generator,
    rate: float = 0.15,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask one tokenised caption for MLM (method.md 2.3).

    Every real BPE token (``0 < t < MASK_ID``) is selected with probability ``rate``; a selected
    token becomes ``<|mask|>`` with probability ``mask_prob``, a uniform random id in
    [1, MASK_ID - 1] with probability ``random_prob``, and stays unchanged otherwise. Labels hold
    the original id at selected positions and 0 elsewhere. When nothing was selected, position 1
    (the first token after SOT) is masked and labelled. The draws come only from ``generator``,
    always the same number of them, so a seed fixes the result.

    Args:
        ids: LongTensor ``[L]`` (SOT, BPE ids, EOT, zero padding).
    Returns:
        ``(masked_ids, labels)``, both LongTensor ``[L]``; ``ids`` is not modified.
    """
    if ids.dim() != 1:
        raise ValueError(f"mask_tokens takes one caption [L], got shape {tuple(ids.shape)}")
    check_masking(rate, mask_prob, random_prob)
    length = ids.shape[0]
    select_u = torch.rand(length, generator=generator)
    action_u = torch.rand(length, generator=generator)
    random_ids = torch.randint(1, MASK_ID, (length,), generator=generator, dtype=ids.dtype)

    maskable = (ids > PAD_ID) & (ids < MASK_ID)
    selected = maskable & (select_u < rate)
    to_mask = selected & (action_u < mask_prob)
    to_random = selected & (action_u >= mask_prob) & (action_u < mask_prob + random_prob)

    masked = torch.where(to_mask, torch.full_like(ids, MASK_ID), ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(selected, ids, torch.zeros_like(ids))
    if not bool(selected.any()):
        masked[1] = MASK_ID
        labels[1] = ids[1]
    return masked, labels
