"""Cross-modal fusion module shared by the MLM and ITM heads (method.md 1.4 and 1.6).

One class, :class:`Fusion`, with three styles:

* ``"irra"`` (method.md 1.4, IRRA's "cross-former"): one cross-attention of the text tokens into
  the image tokens with **no residual**, then ``depth`` CLIP-style pre-LN self-attention blocks (no
  mask, QuickGELU, 4x MLP), then ``ln_post``.
* ``"interlaced"`` (method.md 1.6(B), built at the backbone width from scratch): each of ``depth``
  layers is text self-attention, then text-to-image cross-attention, then an MLP, each pre-LN with a
  residual; a final LayerNorm.
* ``"bidirectional"`` (method.md 1.6(C)): each of ``depth`` layers first updates the image tokens
  by attending to the text (plus an MLP), then updates the text tokens by attending to the updated
  image tokens (plus an MLP); a final LayerNorm on the text tokens.

All styles map ``text_tokens [B, L, D]`` and ``image_tokens [B, N, D]`` to fused text tokens
``[B, L, D]``. No attention masks are used anywhere (method.md 1.4: all 77 positions, padding
included). Initialisation follows method.md 1.4 for every style, with ``L = depth``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from iclf.models.clip import MLP, Attention, Block

FusionStyle = Literal["irra", "interlaced", "bidirectional"]
FUSION_STYLES: tuple[str, ...] = get_args(FusionStyle)

# The building blocks (named q/k/v/out attention linears with SDPA, the CLIP MLP and the pre-LN
# residual Block) are the backbone's own, from iclf.models.clip; only the initialisation differs.


class InterlacedLayer(nn.Module):
    """Text self-attention, text-to-image cross-attention, MLP; each pre-LN with a residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads)
        self.ln_cross_q = nn.LayerNorm(width)
        self.ln_cross_kv = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, 4 * width)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        text = text + self.self_attn(self.ln_self(text))
        text = text + self.cross_attn(self.ln_cross_q(text), context=self.ln_cross_kv(image))
        return text + self.mlp(self.ln_mlp(text))


class CrossBlock(nn.Module):
    """``x + cross_attn(ln_q(x), ln_kv(ctx))``, then ``x + mlp(ln_mlp(x))``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, 4 * width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_q(x), context=self.ln_kv(context))
        return x + self.mlp(self.ln_mlp(x))


class BidirectionalLayer(nn.Module):
    """Image tokens attend to the text, then the text attends to the updated image tokens."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.image_from_text = CrossBlock(width, heads)
        self.text_from_image = CrossBlock(width, heads)

    def forward(
        self, text: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image_from_text(image, text)
        text = self.text_from_image(text, image)
        return text, image


class Fusion(nn.Module):
    """Cross-modal fusion of text tokens with image tokens (method.md 1.4, 1.6(B), 1.6(C)).

    Args:
        style: ``"irra"``, ``"interlaced"`` or ``"bidirectional"`` (see the module docstring).
        depth: number of blocks/layers, at least 1 (depth 0 means "no fusion module": build none).
        width: token width D (the backbone's shared embedding width, 512 for ViT-B-16).
        heads: attention heads; must divide ``width``.
    """

    def __init__(self, style: FusionStyle, depth: int, width: int, heads: int) -> None:
        super().__init__()
        if style not in FUSION_STYLES:
            raise ValueError(f"fusion style {style!r} is not one of {FUSION_STYLES}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(
                f"fusion depth must be an int >= 1, got {depth!r} (depth 0 means no fusion module: "
                "do not build one)"
            )
        if width <= 0:
            raise ValueError(f"fusion width must be positive, got {width}")
        if heads <= 0 or width % heads != 0:
            raise ValueError(f"fusion heads={heads} must be positive and divide width={width}")
        self.style = style
        self.depth = depth
        self.width = width
        self.heads = heads

        if style == "irra":
            self.ln_pre_t = nn.LayerNorm(width)
            self.ln_pre_i = nn.LayerNorm(width)
            self.cross_attn = Attention(width, heads)
            self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        elif style == "interlaced":
            self.blocks = nn.ModuleList(InterlacedLayer(width, heads) for _ in range(depth))
        else:
            self.blocks = nn.ModuleList(BidirectionalLayer(width, heads) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as method.md 1.4 with w = width and L = depth.

        Attention q/k/v weights N(0, w^-0.5), out-projections N(0, w^-0.5 (2L)^-0.5), ``c_fc``
        N(0, (2w)^-0.5), ``c_proj`` N(0, w^-0.5 (2L)^-0.5). Attention biases are zero (as in
        ``nn.MultiheadAttention``); MLP biases keep the PyTorch ``nn.Linear`` default; LayerNorms
        start at weight 1, bias 0.
        """
        w, depth = self.width, self.depth
        attn_std = w**-0.5
        proj_std = w**-0.5 * (2 * depth) ** -0.5
        fc_std = (2 * w) ** -0.5
        for module in self.modules():
            if isinstance(module, Attention):
                for lin in (module.q_proj, module.k_proj, module.v_proj):
                    nn.init.normal_(lin.weight, std=attn_std)
                    nn.init.zeros_(lin.bias)
                nn.init.normal_(module.out_proj.weight, std=proj_std)
                nn.init.zeros_(module.out_proj.bias)
            elif isinstance(module, MLP):
                module.c_fc.reset_parameters()
                module.c_proj.reset_parameters()
                nn.init.normal_(module.c_fc.weight, std=fc_std)
                nn.init.normal_(module.c_proj.weight, std=proj_std)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Fuse ``text_tokens [B, L, D]`` with ``image_tokens [B, N, D]`` into ``[B, L, D]``."""
        if text_tokens.dim() != 3 or image_tokens.dim() != 3:
            raise ValueError(
                "fusion expects text_tokens [B, L, D] and image_tokens [B, N, D], got "
                f"{tuple(text_tokens.shape)} and {tuple(image_tokens.shape)}"
            )
        if text_tokens.shape[0] != image_tokens.shape[0]:
            raise ValueError(
                f"fusion batch mismatch: {text_tokens.shape[0]} text vs "
                f"{image_tokens.shape[0]} image"
            )
        if text_tokens.shape[-1] != self.width or image_tokens.shape[-1] != self.width:
            raise ValueError(
                f"fusion width is {self.width}, got text width {text_tokens.shape[-1]} and image "
                f"width {image_tokens.shape[-1]}"
            )
        if self.style == "irra":
            # (B, L, D); no residual around this cross-attention (method.md 1.4)
            x = self.cross_attn(self.ln_pre_t(text_tokens), context=self.ln_pre_i(image_tokens))
            for block in self.blocks:
                x = block(x)
        elif self.style == "interlaced":
            x = text_tokens
            for layer in self.blocks:
                x = layer(x, image_tokens)
        else:
            x, image = text_tokens, image_tokens
            for layer in self.blocks:
                x, image = layer(x, image)
        return self.ln_post(x)

    def extra_repr(self) -> str:
        return f"style={self.style!r}, depth={self.depth}, width={self.width}, heads={self.heads}"
