"""Backbone architectures as small declarative data behind a registry (method.md 1.1, 1.2).

A :class:`BackboneSpec` holds the sizes of the two CLIP towers; :func:`register` adds one under a
name and :func:`get_spec` / :func:`list_backbones` look them up. ``ViT-B-16`` is OpenAI's CLIP
ViT-B/16 (the ICLF backbone); ``tiny`` is a small model with the same structure for tests and the
synthetic default, fast on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BackboneSpec", "register", "get_spec", "list_backbones"]


@dataclass(frozen=True)
class BackboneSpec:
    """Sizes of a CLIP backbone (image tower ViT + text transformer)."""

    embed_dim: int  # shared embedding width D (columns of visual.proj / text_projection)
    vision_width: int  # ViT token width
    vision_layers: int  # number of ViT residual blocks
    vision_heads: int  # ViT attention heads
    patch_size: int  # square patch side (conv1 kernel)
    text_width: int  # text transformer width
    text_layers: int  # number of text residual blocks
    text_heads: int  # text attention heads
    vocab_size: int = 49408  # token embedding rows (CLIP BPE + <|mask|>, see iclf.tokenizer)
    context_length: int = 77  # text positions
    image_size: tuple[int, int] = (384, 128)  # default input (H, W)

    def __post_init__(self) -> None:
        for field in (
            "embed_dim",
            "vision_width",
            "vision_layers",
            "vision_heads",
            "patch_size",
            "text_width",
            "text_layers",
            "text_heads",
            "vocab_size",
            "context_length",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BackboneSpec.{field} must be a positive int, got {value!r}")
        if self.vision_width % self.vision_heads:
            raise ValueError(
                f"BackboneSpec.vision_width {self.vision_width} is not divisible by "
                f"vision_heads {self.vision_heads}"
            )
        if self.text_width % self.text_heads:
            raise ValueError(
                f"BackboneSpec.text_width {self.text_width} is not divisible by "
                f"text_heads {self.text_heads}"
            )
        size = tuple(self.image_size)
        if len(size) != 2 or any(not isinstance(s, int) or s < self.patch_size for s in size):
            raise ValueError(
                f"BackboneSpec.image_size must be (H, W) ints of at least patch_size "
                f"{self.patch_size}, got {self.image_size!r}"
            )
        object.__setattr__(self, "image_size", size)


_REGISTRY: dict[str, BackboneSpec] = {}


def register(name: str, spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry under ``name`` and return it."""
    if not isinstance(spec, BackboneSpec):
        raise TypeError(
            f"register({name!r}, ...) expects a BackboneSpec, got {type(spec).__name__}"
        )
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"backbone {name!r} is already registered")
    _REGISTRY[name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    """The spec registered under ``name``; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        known = ", ".join(list_backbones())
        raise ValueError(f"unknown backbone {name!r}; known backbones: {known}")
    return _REGISTRY[name]


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return sorted(_REGISTRY)


# OpenAI CLIP ViT-B/16: ViT 768 wide, 12 layers, 12 heads; text 512 wide, 12 layers, 8 heads;
# shared width 512 (method.md 1.1, 1.2). Default input 384x128 -> 24x8 grid + CLS = 193 tokens.
register(
    "ViT-B-16",
    BackboneSpec(
        embed_dim=512,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        patch_size=16,
        text_width=512,
        text_layers=12,
        text_heads=8,
        image_size=(384, 128),
    ),
)

# Same structure, CPU-sized: for tests and the synthetic default (8x4 grid + CLS at 128x64).
register(
    "tiny",
    BackboneSpec(
        embed_dim=128,
        vision_width=128,
        vision_layers=3,
        vision_heads=4,
        patch_size=16,
        text_width=128,
        text_layers=3,
        text_heads=4,
        image_size=(128, 64),
    ),
)
