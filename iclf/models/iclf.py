"""The ICLF model: CLIP backbone, cross-modal fusion and task heads (method.md 1.1-1.7).

Reads top-down like the method's figure: image encoder and text encoder (the backbone, optionally
with LoRA adapters), the fusion module (text tokens attend to image tokens), then the heads (MLM on
masked positions, ITM on fused position 0, ID on the global features). ``forward`` returns
features only; the losses and their weights live in ``iclf.losses`` and ``iclf.objective``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from iclf.models.fusion import Fusion, FusionStyle
from iclf.models.heads import IDClassifier, ITMHead, MLMHead
from iclf.models.lora import LoraSettings, apply_lora, count_trainable
from iclf.names import FUSION_LOSSES, fusion_problem

__all__ = ["Features", "ICLFModel", "build_iclf_model"]


@dataclass
class Features:
    """What :meth:`ICLFModel.forward` returns.

    Attributes:
        image_tokens: [B, N, D] every image token after ``ln_post`` and ``proj``.
        text_tokens: [B, L, D] every text token after ``ln_final`` and ``text_projection``.
        image_feat: [B, D] the CLS token (token 0), un-normalised (method.md 1.1).
        text_feat: [B, D] the token at ``argmax(ids)`` (EOT), un-normalised (method.md 1.2).
    """

    image_tokens: torch.Tensor
    text_tokens: torch.Tensor
    image_feat: torch.Tensor
    text_feat: torch.Tensor


def eot_features(text_tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The token at the EOT position ``ids.argmax(-1)`` of each sequence: [B, L, D] -> [B, D]."""
    rows = torch.arange(text_tokens.shape[0], device=text_tokens.device)
    return text_tokens[rows, ids.argmax(-1)]


class ICLFModel(nn.Module):
    """CLIP backbone + fusion + MLM/ITM/ID heads + learnable temperature (docs/design.md).

    Args:
        backbone: a ``CLIPBackbone`` (from ``create_backbone``), LoRA already applied if wanted.
        fusion: the cross-modal fusion module, or None (then MLM and ITM are unavailable).
        mlm_head: MLM head over the fused tokens, or None.
        itm_head: ITM head over fused position 0, or None.
        classifier: ID classifier shared by image and text global features, or None.
        temp_init: initial value of the learnable temperature ``temp`` (method.md 1.5: 0.07,
            not clamped; used by the ITM hard-negative sampling and the intra-modal loss).
    """

    def __init__(
        self,
        backbone: nn.Module,
        fusion: Fusion | None = None,
        mlm_head: MLMHead | None = None,
        itm_head: ITMHead | None = None,
        classifier: IDClassifier | None = None,
        temp_init: float = 0.07,
    ) -> None:
        super().__init__()
        heads = [n for n, h in (("mlm", mlm_head), ("itm", itm_head)) if h is not None]
        problem = fusion_problem(heads, 0 if fusion is None else 1)
        if problem is not None:
            raise ValueError(f"ICLFModel: {problem}")
        if not temp_init > 0:
            raise ValueError(f"ICLFModel: temp_init must be > 0, got {temp_init!r}")
        self.backbone = backbone
        self.fusion = fusion
        self.mlm_head = mlm_head
        self.itm_head = itm_head
        self.classifier = classifier
        self.temp = nn.Parameter(torch.tensor(float(temp_init)))

    # --- image and text encoders (method.md 1.1, 1.2) -------------------------------------------

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, D] image tokens."""
        return self.backbone.encode_image_tokens(images)

    def encode_text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, L, D] text tokens (e.g. the clean-caption second text pass)."""
        return self.backbone.encode_text_tokens(ids)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, D] global image feature (CLS), un-normalised, float (1.3)."""
        return self.encode_image_tokens(images)[:, 0].float()

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] -> [B, D] global text feature (EOT token), un-normalised, float (1.3)."""
        return eot_features(self.encode_text_tokens(ids), ids).float()

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor) -> Features:
        """Encode both modalities: tokens and global features (no losses, no fusion)."""
        image_tokens = self.encode_image_tokens(images)  # (B, N, D)
        text_tokens = self.encode_text_tokens(text_ids)  # (B, L, D)
        return Features(
            image_tokens=image_tokens,
            text_tokens=text_tokens,
            image_feat=image_tokens[:, 0].float(),
            text_feat=eot_features(text_tokens, text_ids).float(),
        )

    # --- fusion and heads (method.md 1.4-1.6) ---------------------------------------------------

    def fuse(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, D] text tokens attend to [B, N, D] image tokens -> fused [B, L, D]."""
        if self.fusion is None:
            raise RuntimeError(f"ICLFModel.fuse: {fusion_problem(FUSION_LOSSES, 0)}")
        return self.fusion(text_tokens, image_tokens)

    def mlm_logits(self, fused: torch.Tensor, positions_mask: torch.Tensor) -> torch.Tensor:
        """MLM logits only at the masked positions: fused [B, L, D], mask [B, L] bool -> [M, V].

        Rows follow ``fused[positions_mask]`` order (row-major over batch then position), so the
        matching labels are ``labels[positions_mask]``.
        """
        if self.mlm_head is None:
            raise RuntimeError("ICLFModel.mlm_logits: this model was built without an MLM head")
        if positions_mask.dtype != torch.bool or positions_mask.shape != fused.shape[:2]:
            raise ValueError(
                "mlm_logits: positions_mask must be a bool tensor of shape "
                f"{tuple(fused.shape[:2])}, got {positions_mask.dtype} "
                f"{tuple(positions_mask.shape)}"
            )
        return self.mlm_head(fused[positions_mask])  # (M, V)

    def itm_logits(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Match logits of text/image pairs: fused position 0 through the ITM head -> [B', 2]."""
        if self.itm_head is None:
            raise RuntimeError("ICLFModel.itm_logits: this model was built without an ITM head")
        return self.itm_head(self.fuse(text_tokens, image_tokens)[:, 0])

    def id_logits(self, feat: torch.Tensor) -> torch.Tensor:
        """Identity logits of global features: [B, D] -> [B, num_classes]."""
        if self.classifier is None:
            raise RuntimeError("ICLFModel.id_logits: this model was built without an ID classifier")
        return self.classifier(feat)

    # --- handles for optimiser parameter groups -------------------------------------------------

    def new_modules(self) -> list[nn.Module]:
        """The modules outside the backbone that exist (fusion, MLM head, ITM head, classifier).

        ``temp`` is a parameter of the model itself; :meth:`new_parameters` includes it.
        """
        modules = [self.fusion, self.mlm_head, self.itm_head, self.classifier]
        return [m for m in modules if m is not None]

    def new_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the backbone: those of :meth:`new_modules`, then ``temp``."""
        return [p for m in self.new_modules() for p in m.parameters()] + [self.temp]

    def trainable_parameter_count(self) -> int:
        """Number of parameters with ``requires_grad`` (backbone under LoRA, new modules, temp)."""
        return count_trainable(self)


def build_iclf_model(
    backbone_name: str,
    pretrained: str | None,
    image_size: Sequence[int],
    num_classes: int,
    fusion_style: FusionStyle,
    fusion_depth: int,
    fusion_heads: int,
    lora: LoraSettings | None,
    need_mlm: bool,
    need_itm: bool,
    need_id: bool,
    temp_init: float = 0.07,
    pos_interp: str = "bilinear",
    stride: int | None = None,
    act: str = "quick_gelu",
) -> ICLFModel:
    """Build the backbone (loading ``pretrained`` if given), apply LoRA, add fusion and heads.

    The fusion module is built only when MLM or ITM needs it; ``fusion_depth == 0`` with MLM or ITM
    raises ValueError. ``lora`` None or rank 0 means full fine-tuning. ``num_classes`` is used only
    when ``need_id``. ``act`` is the backbone's MLP activation (``create_backbone``); the fusion
    module and the MLM head keep QuickGELU, as in the reference.
    """
    from iclf.models import create_backbone  # the package re-exports the backbone factory

    needs_fusion = need_mlm or need_itm
    problem = fusion_problem([n for n, on in (("mlm", need_mlm), ("itm", need_itm)) if on],
                             fusion_depth)
    if problem is not None:
        raise ValueError(problem)
    if need_id and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"the ID loss needs num_classes >= 1, got {num_classes!r}")

    backbone = create_backbone(
        backbone_name,
        pretrained=pretrained,
        image_size=tuple(image_size),
        stride=stride,
        pos_interp=pos_interp,
        act=act,
    )
    if lora is not None:
        apply_lora(backbone, lora)
    width = backbone.embed_dim
    fusion = Fusion(fusion_style, fusion_depth, width, fusion_heads) if needs_fusion else None
    return ICLFModel(
        backbone,
        fusion=fusion,
        mlm_head=MLMHead(width, backbone.vocab_size) if need_mlm else None,
        itm_head=ITMHead(width) if need_itm else None,
        classifier=IDClassifier(width, num_classes) if need_id else None,
        temp_init=temp_init,
    )
