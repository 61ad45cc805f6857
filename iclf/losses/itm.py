"""Image-text matching with identity-aware hard negatives, method.md 1.6(A) and 2.5."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iclf.losses._checks import check_paired_features, check_pids, same_identity
from iclf.precision import fp32_region

#: Added to every softmax weight before the same-identity entries are zeroed (as released).
WEIGHT_FLOOR = 1e-5


def _negative_weights(sim: torch.Tensor, same: torch.Tensor, temp: float) -> torch.Tensor:
    """softmax(sim / temp) + 1e-5 per row, zero where the identities match.

    A row whose every entry shares the anchor's identity (a batch of one identity) would be all
    zero and break ``torch.multinomial``. Such a row falls back to uniform weights over the other
    indices of the batch, or over the anchor itself when B == 1. The fallback keeps training
    alive on degenerate batches; those "negatives" share the anchor's identity, so the ITM loss
    on them is label noise, which is why real batches should hold several identities.
    """
    weights = torch.softmax(sim.float() / temp, dim=1) + WEIGHT_FLOOR
    weights = weights.masked_fill(same, 0.0)
    empty = weights.sum(dim=1) == 0
    if bool(empty.any()):
        size = weights.shape[0]
        fallback = torch.ones_like(weights)
        if size > 1:
            fallback.fill_diagonal_(0.0)
        weights = torch.where(empty.unsqueeze(1), fallback, weights)
    return weights


@torch.no_grad()
def sample_hard_negatives(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    pids: torch.Tensor,
    temp: torch.Tensor | float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one hard-negative image per text and one hard-negative text per image, 1.6(A).

    Weights are row softmaxes of the cosine similarities divided by ``temp`` (no gradient),
    plus 1e-5, with every same-identity entry (the diagonal included) set to 0. Each direction
    is one batched ``torch.multinomial(weights, 1)`` call. See :func:`_negative_weights` for
    the single-identity fallback.

    Returns ``(neg_image_idx, neg_text_idx)``, both [B] long: ``neg_image_idx[b]`` is the image
    paired with text b as a negative, ``neg_text_idx[b]`` the text paired with image b.
    The similarities and weights are fp32, also under autocast (:mod:`iclf.precision`).
    """
    check_paired_features(image_feat, text_feat, "sample_hard_negatives")
    check_pids(pids, image_feat.shape[0], "sample_hard_negatives")
    temp_value = float(temp.detach()) if isinstance(temp, torch.Tensor) else float(temp)
    if temp_value <= 0.0:
        raise ValueError(f"sample_hard_negatives: temp must be positive; got {temp_value}")
    with fp32_region(image_feat):
        image = F.normalize(image_feat.detach().float(), dim=-1)
        text = F.normalize(text_feat.detach().float(), dim=-1)
        same = same_identity(pids)
        sim_t2i = text @ image.t()  # (B, B): text rows, image columns
        w_t2i = _negative_weights(sim_t2i, same, temp_value)
        w_i2t = _negative_weights(sim_t2i.t(), same, temp_value)
    neg_image_idx = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
    neg_text_idx = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    return neg_image_idx, neg_text_idx


def negative_pairs(
    text_tokens: torch.Tensor,
    image_tokens: torch.Tensor,
    neg_image_idx: torch.Tensor,
    neg_text_idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2B interleaved negative pairs of 1.6(A): texts [T, T_neg] with images [I_neg, I]."""
    texts = torch.cat([text_tokens, text_tokens[neg_text_idx]], dim=0)
    images = torch.cat([image_tokens[neg_image_idx], image_tokens], dim=0)
    return texts, images


def itm_labels(batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Labels of the 3B ITM pairs: B ones (positives) followed by 2B zeros (negatives)."""
    if batch_size < 1:
        raise ValueError(f"itm_labels: batch_size must be >= 1; got {batch_size}")
    labels = torch.zeros(3 * batch_size, dtype=torch.long, device=device)
    labels[:batch_size] = 1
    return labels


def itm_loss(logits: torch.Tensor) -> torch.Tensor:
    """2-way cross-entropy over [positives (B); negatives (2B)] ITM logits [3B, 2], 1.6(A)."""
    rows = logits.shape[0] if logits.dim() == 2 else 0
    if logits.dim() != 2 or logits.shape[1] != 2 or rows % 3 != 0 or rows == 0:
        raise ValueError(
            f"itm_loss: logits must be [3B, 2] (B positives then 2B negatives); got "
            f"{tuple(logits.shape)}"
        )
    labels = itm_labels(logits.shape[0] // 3, device=logits.device)
    with fp32_region(logits):
        return F.cross_entropy(logits.float(), labels)
