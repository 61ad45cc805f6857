"""Task heads on top of the backbone and the fusion module (method.md 1.5).

* :class:`MLMHead` (IRRA): dense, QuickGELU, LayerNorm, fc to the vocabulary.
* :class:`ITMHead` (ICLF, APTM/X-VLM ``build_mlp``): Linear, LayerNorm, GELU, Linear to 2 classes.
* :class:`IDClassifier` (IRRA): one linear layer shared by the image and text global features.
"""

from __future__ import annotations

import torch
from torch import nn

from iclf.models.clip import QuickGELU


class MLMHead(nn.Module):
    """Masked-language-model head (method.md 1.5): ``[..., w] -> [..., vocab_size]``.

    ``dense`` Linear(w, w) with weight N(0, (2w)^-0.5), QuickGELU, LayerNorm(w), ``fc``
    Linear(w, vocab) with weight N(0, w^-0.5 * 8^-0.5); biases keep the ``nn.Linear`` default.
    """

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        if width <= 0 or vocab_size <= 0:
            raise ValueError(
                f"MLMHead needs positive width and vocab_size, got {width}, {vocab_size}"
            )
        self.dense = nn.Linear(width, width)
        self.gelu = QuickGELU()
        self.ln = nn.LayerNorm(width)
        self.fc = nn.Linear(width, vocab_size)
        nn.init.normal_(self.dense.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(self.fc.weight, std=width**-0.5 * 8**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(self.gelu(self.dense(x))))


class ITMHead(nn.Module):
    """Image-text matching head (method.md 1.5): Linear(w, 2w), LayerNorm, GELU, Linear(2w, 2).

    PyTorch default initialisation; the exact (erf) GELU.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"ITMHead needs a positive width, got {width}")
        self.net = nn.Sequential(
            nn.Linear(width, 2 * width),
            nn.LayerNorm(2 * width),
            nn.GELU(),
            nn.Linear(2 * width, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class IDClassifier(nn.Module):
    """Identity classifier (method.md 1.5): Linear(embed_dim, num_classes).

    Weight N(0, 0.001) (standard deviation 0.001), bias 0. One classifier is shared by the image
    and text global features.
    """

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        if embed_dim <= 0 or num_classes <= 0:
            raise ValueError(
                "IDClassifier needs positive embed_dim and num_classes, got "
                f"{embed_dim}, {num_classes}"
            )
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
