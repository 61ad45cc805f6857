"""Per-epoch warm-up + cosine learning-rate factor (method.md 3.3)."""

from __future__ import annotations

import math


def warmup_cosine_factor(epoch_index: int, *, total_epochs: int, warmup_epochs: int,
                         warmup_factor: float, target_ratio: float = 0.0) -> float:
    """The factor applied to every group's base lr during epoch ``epoch_index + 1``.

    ``e = epoch_index`` counts from 0. Warm-up: ``warmup_factor + (1 - warmup_factor) * e / W``
    for ``e < W``; then cosine from 1 down to ``target_ratio``:
    ``target + (1 - target) * 0.5 * (1 + cos(pi * (e - W) / (E - W)))``.
    With E=60, W=5, factor 0.1 and base lr 1e-5 this gives 1e-6 at epoch 1, 1e-5 at epoch 6 and
    8.2e-9 at epoch 60, the table of method.md 3.3.
    """
    e = epoch_index
    if e < warmup_epochs:
        return warmup_factor + (1.0 - warmup_factor) * e / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1)
    cos = 0.5 * (1.0 + math.cos(math.pi * (e - warmup_epochs) / span))
    return target_ratio + (1.0 - target_ratio) * cos
