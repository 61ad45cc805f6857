"""The CLIP backbone: ViT image tower and causal text transformer (method.md 1.1, 1.2).

Read top-down: building blocks (QuickGELU, Attention with named q/k/v/out linears, MLP, a
pre-LayerNorm residual Block, Transformer), then the image tower, the text tower, and the
two-tower :class:`CLIPBackbone` with :func:`create_backbone` as the construction path.

Every projection is a plain ``nn.Linear`` (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``,
``c_fc``, ``c_proj``), so LoRA targets are module names and OpenAI's packed ``in_proj`` weights
load through one converter (:mod:`iclf.models.weights`). Tokens are batch-first throughout:
``(B, N, width)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iclf.models.registry import BackboneSpec, get_spec
from iclf.models.weights import POS_INTERP_MODES, load_pretrained

__all__ = [
    "ACTIVATIONS",
    "QuickGELU",
    "Attention",
    "MLP",
    "Block",
    "Transformer",
    "VisionTower",
    "TextTower",
    "CLIPBackbone",
    "create_backbone",
]


#: The MLP activations a backbone can be built with. OpenAI's CLIP weights were trained with
#: ``quick_gelu``; every other open_clip ViT-B-16 checkpoint (LAION, DataComp, ...) with the exact
#: (erf) ``gelu``. A checkpoint file does not record which, so it is a setting (``model.act``).
ACTIVATIONS: tuple[str, ...] = ("quick_gelu", "gelu")


class QuickGELU(nn.Module):
    """CLIP's activation, x * sigmoid(1.702 x) (method.md 1.1)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(act: str) -> nn.Module:
    """``"quick_gelu"`` -> :class:`QuickGELU`, ``"gelu"`` -> ``nn.GELU()`` (exact, erf)."""
    if act == "quick_gelu":
        return QuickGELU()
    if act == "gelu":
        return nn.GELU()
    raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")


class Attention(nn.Module):
    """Multi-head attention with separate, named ``q_proj``/``k_proj``/``v_proj``/``out_proj``.

    Self-attention by default; pass ``context`` to attend from ``x`` to another sequence of the
    same width. ``attn_mask`` is additive (float, broadcast to ``(B, heads, N, M)``) or boolean
    (True = attend), as for :func:`torch.nn.functional.scaled_dot_product_attention`.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by heads {heads}")
        self.width = width
        self.heads = heads
        self.head_dim = width // heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)

    def forward(
        self, x: Tensor, context: Tensor | None = None, attn_mask: Tensor | None = None
    ) -> Tensor:
        source = x if context is None else context
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(source))
        v = self._split_heads(self.v_proj(source))
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)  # SDPA wants a float mask in the query's dtype
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, N, d)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.width))


class MLP(nn.Module):
    """Position-wise feed-forward: c_fc -> activation -> c_proj (ratio 4, method.md 1.1).

    ``act`` is ``"quick_gelu"`` (CLIP's, the default) or ``"gelu"`` (see :data:`ACTIVATIONS`).
    """

    def __init__(self, width: int, hidden: int, act: str = "quick_gelu") -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = make_activation(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, act: str = "quick_gelu") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, width * mlp_ratio, act=act)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`Block` under ``resblocks`` (OpenAI's key names)."""

    def __init__(self, width: int, layers: int, heads: int, act: str = "quick_gelu") -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.heads = heads
        self.resblocks = nn.ModuleList(Block(width, heads, act=act) for _ in range(layers))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """OpenAI/open_clip initialisation: attention std width^-0.5, output projections
        width^-0.5 (2 layers)^-0.5, c_fc (2 width)^-0.5; biases zero."""
        attn_std = self.width**-0.5
        proj_std = self.width**-0.5 * (2 * self.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            for linear, std in (
                (block.attn.q_proj, attn_std),
                (block.attn.k_proj, attn_std),
                (block.attn.v_proj, attn_std),
                (block.attn.out_proj, proj_std),
                (block.mlp.c_fc, fc_std),
                (block.mlp.c_proj, proj_std),
            ):
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class VisionTower(nn.Module):
    """ViT image encoder (method.md 1.1).

    conv1 patchifies (kernel ``patch_size``, stride ``stride``, no bias); patches are flattened
    row-major, the class embedding is prepended and the positional embedding added; then ln_pre,
    the transformer, ln_post on all tokens and ``proj`` on all tokens: ``(B, 1 + rows*cols, D)``.
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        patch_size: int,
        stride: int,
        image_size: tuple[int, int],
        output_dim: int,
        act: str = "quick_gelu",
    ) -> None:
        super().__init__()
        height, width_px = image_size
        if (height - patch_size) % stride or (width_px - patch_size) % stride:
            raise ValueError(
                f"image_size {image_size} is not covered by patches of {patch_size} at stride "
                f"{stride}: (side - patch_size) must be a multiple of the stride"
            )
        self.image_size = (height, width_px)
        self.patch_size = patch_size
        self.stride = stride
        self.grid = ((height - patch_size) // stride + 1, (width_px - patch_size) // stride + 1)
        num_tokens = self.grid[0] * self.grid[1] + 1
        scale = width**-0.5

        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=stride, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, act=act)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} (H, W) but the backbone was built for "
                f"{self.image_size}; pass image_size= to create_backbone"
            )
        x = self.conv1(images)  # (B, width, rows, cols)
        x = x.flatten(2).transpose(1, 2)  # (B, rows*cols, width), row-major
        cls = self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, N, width)
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x)
        return x @ self.proj  # (B, N, D)


class TextTower(nn.Module):
    """CLIP text transformer (method.md 1.2).

    Token plus positional embedding, causal additive mask (-inf above the diagonal), ln_final on
    all tokens, then ``text_projection`` on all tokens: ``(B, L, D)``.
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        vocab_size: int,
        context_length: int,
        output_dim: int,
        act: str = "quick_gelu",
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, act=act)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        causal = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal, persistent=False)

        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.shape[1] > self.context_length:
            raise ValueError(
                f"token ids must be (B, L) with L <= {self.context_length}, got {tuple(ids.shape)}"
            )
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length]  # (B, L, width)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        return x @ self.text_projection  # (B, L, D)


class CLIPBackbone(nn.Module):
    """The two CLIP towers, ``visual`` and ``text`` (design.md "Backbone").

    Global features are the projected CLS token (image) and the projected token at
    ``ids.argmax(-1)`` (text; EOT has the largest id), un-normalised (method.md 1.3).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        image_size: tuple[int, int] | None = None,
        stride: int | None = None,
        name: str = "custom",
        act: str = "quick_gelu",
    ) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        image_size = tuple(spec.image_size if image_size is None else image_size)
        if len(image_size) != 2 or any(not isinstance(s, int) for s in image_size):
            raise ValueError(f"image_size must be (H, W) ints, got {image_size!r}")
        stride = spec.patch_size if stride is None else stride
        if not isinstance(stride, int) or stride <= 0:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.name = name
        self.spec = spec
        self.act = act
        self.visual = VisionTower(
            width=spec.vision_width,
            layers=spec.vision_layers,
            heads=spec.vision_heads,
            patch_size=spec.patch_size,
            stride=stride,
            image_size=image_size,
            output_dim=spec.embed_dim,
            act=act,
        )
        self.text = TextTower(
            width=spec.text_width,
            layers=spec.text_layers,
            heads=spec.text_heads,
            vocab_size=spec.vocab_size,
            context_length=spec.context_length,
            output_dim=spec.embed_dim,
            act=act,
        )

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def image_size(self) -> tuple[int, int]:
        return self.visual.image_size

    @property
    def stride(self) -> int:
        return self.visual.stride

    @property
    def grid(self) -> tuple[int, int]:
        return self.visual.grid

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 1

    @property
    def context_length(self) -> int:
        return self.text.context_length

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def encode_image_tokens(self, images: Tensor) -> Tensor:
        """Every image token after ln_post and proj: ``(B, N, D)``."""
        return self.visual(images)

    def encode_image(self, images: Tensor) -> Tensor:
        """The CLS token after ln_post and proj: ``(B, D)``."""
        return self.visual(images)[:, 0]

    def encode_text_tokens(self, ids: Tensor) -> Tensor:
        """Every text token after ln_final and text_projection: ``(B, L, D)``."""
        return self.text(ids)

    def encode_text(self, ids: Tensor) -> Tensor:
        """The token at ``ids.argmax(-1)`` (EOT) after ln_final and text_projection: ``(B, D)``."""
        tokens = self.text(ids)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), ids.argmax(dim=-1)]

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, image_size={self.image_size}, stride={self.stride}, "
            f"grid={self.grid}, embed_dim={self.embed_dim}, act={self.act!r}"
        )


def create_backbone(
    name: str | BackboneSpec,
    pretrained: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    stride: int | None = None,
    pos_interp: str = "bilinear",
    act: str = "quick_gelu",
) -> CLIPBackbone:
    """Build a registered (or given) backbone, optionally loading a local CLIP checkpoint.

    Args:
        name: a registered name (see :func:`iclf.models.list_backbones`) or a ``BackboneSpec``.
        pretrained: path to a local checkpoint (OpenAI TorchScript ``ViT-B-16.pt``, or a state
            dict in the OpenAI/open_clip layout); ``None`` keeps the random initialisation.
        image_size: input (H, W); default the spec's ``image_size``.
        stride: patch stride; default the patch size (non-overlapping patches).
        pos_interp: ``"bilinear"`` or ``"bicubic"``, how the checkpoint's positional embedding
            is resized to this grid (method.md 1.1); used only when ``pretrained`` is given.
        act: the MLP activation of both towers, ``"quick_gelu"`` (OpenAI's CLIP weights) or
            ``"gelu"`` (every other open_clip ViT-B-16 checkpoint). The file does not say which;
            a mismatch loads without error but changes the features by about 1e-2 relative.
    """
    if pos_interp not in POS_INTERP_MODES:
        raise ValueError(f"pos_interp must be one of {POS_INTERP_MODES}, got {pos_interp!r}")
    if isinstance(name, BackboneSpec):
        spec, label = name, "custom"
    else:
        spec, label = get_spec(name), name
    backbone = CLIPBackbone(spec, image_size=image_size, stride=stride, name=label, act=act)
    if pretrained is not None:
        load_pretrained(backbone, pretrained, pos_interp=pos_interp)
    return backbone
