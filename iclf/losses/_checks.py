"""Shape checks shared by the loss functions (clear errors instead of broadcasting surprises)."""

from __future__ import annotations

import torch


def check_paired_features(image_feat: torch.Tensor, text_feat: torch.Tensor, where: str) -> None:
    """Both feature tensors must be [B, D] with the same B and D."""
    if image_feat.dim() != 2 or text_feat.dim() != 2:
        raise ValueError(
            f"{where}: image_feat and text_feat must be [B, D]; got {tuple(image_feat.shape)} "
            f"and {tuple(text_feat.shape)}"
        )
    if image_feat.shape != text_feat.shape:
        raise ValueError(
            f"{where}: image_feat {tuple(image_feat.shape)} and text_feat "
            f"{tuple(text_feat.shape)} must have the same shape (one caption per image)"
        )
    if image_feat.shape[0] == 0:
        raise ValueError(f"{where}: empty batch")


def check_pids(pids: torch.Tensor, batch: int, where: str) -> None:
    """Identity labels must be a 1-D integer tensor of length ``batch``."""
    if pids.dim() != 1 or pids.shape[0] != batch:
        raise ValueError(f"{where}: pids must have shape [{batch}]; got {tuple(pids.shape)}")
    if pids.dtype.is_floating_point or pids.dtype == torch.bool:
        raise ValueError(f"{where}: pids must be an integer tensor; got {pids.dtype}")


def same_identity(pids: torch.Tensor) -> torch.Tensor:
    """[B, B] boolean matrix, True where two samples share an identity (diagonal included)."""
    return pids.unsqueeze(0) == pids.unsqueeze(1)
