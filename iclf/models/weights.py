"""Loading CLIP weights from a local file into the project's backbone (method.md 1.1, 1.2).

Accepted files:

* OpenAI's CLIP release, a TorchScript archive such as ``ViT-B-16.pt`` (read with
  ``torch.jit.load(path, map_location="cpu").state_dict()``);
* a plain state dict (``torch.load(..., weights_only=True)``) in the OpenAI layout, which is also
  open_clip's layout, optionally wrapped as ``{"state_dict": ...}`` and/or with a ``module.``
  prefix (open_clip training checkpoints); text keys may be top-level (OpenAI) or under ``text.``.

The converter splits each packed ``attn.in_proj_weight`` / ``attn.in_proj_bias`` into the named
``q_proj`` / ``k_proj`` / ``v_proj`` linears (``out_proj`` is kept), moves OpenAI's top-level text
keys under ``text.``, drops metadata keys the model does not hold (``logit_scale``,
``input_resolution``, ``context_length``, ``vocab_size``, attention masks) and resizes the visual
positional embedding to the backbone's grid: the CLS row is kept, the grid rows are reshaped to the
source grid and ``F.interpolate``-d (``bilinear`` or ``bicubic``, ``align_corners=False``) to the
target grid. Loading is strict: missing, unexpected or mis-shaped keys raise :class:`WeightsError`
naming the file.

:func:`backbone_state_dict_openai_layout` writes the inverse (packed ``in_proj``, top-level text
keys), plus ``visual.grid_size`` so a non-square grid can be resized when loaded again.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from iclf.models.clip import CLIPBackbone

__all__ = [
    "WeightsError",
    "POS_INTERP_MODES",
    "GRID_KEY",
    "read_checkpoint",
    "convert_state_dict",
    "resize_pos_embed",
    "load_clip_state_dict",
    "load_pretrained",
    "backbone_state_dict_openai_layout",
]

POS_INTERP_MODES = ("bilinear", "bicubic")

# Written by backbone_state_dict_openai_layout: (rows, cols) of visual.positional_embedding.
GRID_KEY = "visual.grid_size"

# Keys in CLIP checkpoints that the backbone does not hold; dropped on load.
_METADATA_KEYS = frozenset(
    {"logit_scale", "input_resolution", "context_length", "vocab_size", "attn_mask", GRID_KEY}
)

# OpenAI's top-level text keys start with one of these; the backbone holds them under ``text.``.
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                  "text_projection")

_WHERE_TO_GET = (
    "For ViT-B-16, download OpenAI's CLIP ViT-B-16.pt (the TorchScript archive of the CLIP "
    "release) onto this machine and pass its path as pretrained=, e.g. "
    "pretrained='weights/ViT-B-16.pt'; nothing is downloaded at run time."
)


class WeightsError(RuntimeError):
    """A checkpoint file is missing, unreadable, not CLIP, or does not fit the backbone."""

    def __init__(self, file: str | Path, message: str) -> None:
        self.file = str(file)
        super().__init__(f"{self.file}: {message}")


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives are zips holding ``constants.pkl`` (torch.save zips do not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.rsplit("/", 1)[-1] == "constants.pkl" for n in archive.namelist())


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The raw state dict in ``path`` (TorchScript archive or torch.save file), unwrapped from
    ``{"state_dict": ...}`` and a ``module.`` prefix; keys as in the file otherwise."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "file not found"
        raise WeightsError(path, f"{what}. {_WHERE_TO_GET}")
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():  # torch marks jit as deprecated; OpenAI ships it
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as err:  # torch raises many types for a broken archive
            raise WeightsError(path, f"TorchScript archive could not be loaded ({err})") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise WeightsError(
                path,
                f"not a PyTorch checkpoint ({type(err).__name__}: {str(err)[:200]}). "
                f"{_WHERE_TO_GET}",
            ) from err
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            path, f"not a CLIP checkpoint: expected a state dict of tensors. {_WHERE_TO_GET}"
        )
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if "visual.positional_embedding" not in state or "visual.conv1.weight" not in state:
        raise WeightsError(
            path,
            "not a CLIP ViT checkpoint: no visual.conv1.weight / visual.positional_embedding "
            f"key. {_WHERE_TO_GET}",
        )
    return state


def convert_state_dict(state: Mapping[str, Tensor], file: str | Path = "<state dict>"
                       ) -> dict[str, Tensor]:
    """OpenAI/open_clip-layout state dict -> the backbone's layout (no positional resize).

    Packed ``attn.in_proj_weight``/``in_proj_bias`` are split into ``q_proj``/``k_proj``/
    ``v_proj``; top-level text keys move under ``text.``; metadata keys are dropped.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in _METADATA_KEYS or key.endswith(".attn_mask"):
            continue
        if key.startswith(_TEXT_PREFIXES):
            key = "text." + key
        for packed, suffix in (("attn.in_proj_weight", "weight"), ("attn.in_proj_bias", "bias")):
            if key.endswith(packed):
                if value.shape[0] % 3:
                    raise WeightsError(
                        file, f"{key} has {value.shape[0]} rows, not a multiple of 3 (q, k, v)"
                    )
                stem = key[: -len(packed)] + "attn."
                q, k, v = value.chunk(3, dim=0)
                out[stem + f"q_proj.{suffix}"] = q
                out[stem + f"k_proj.{suffix}"] = k
                out[stem + f"v_proj.{suffix}"] = v
                break
        else:
            out[key] = value
    return out


def resize_pos_embed(
    table: Tensor,
    src_grid: tuple[int, int],
    dst_grid: tuple[int, int],
    mode: str = "bilinear",
) -> Tensor:
    """Resize a ViT positional table ``(1 + rows*cols, width)`` from ``src_grid`` to
    ``dst_grid`` (method.md 1.1): the CLS row is kept, the grid rows are reshaped to
    ``(1, width, rows, cols)``, interpolated with ``align_corners=False`` and flattened row-major.
    """
    if mode not in POS_INTERP_MODES:
        raise ValueError(f"pos_interp must be one of {POS_INTERP_MODES}, got {mode!r}")
    src_rows, src_cols = src_grid
    if table.dim() != 2 or table.shape[0] != 1 + src_rows * src_cols:
        raise ValueError(
            f"positional table of shape {tuple(table.shape)} does not match grid {tuple(src_grid)}"
            f" (+1 CLS row)"
        )
    if tuple(src_grid) == tuple(dst_grid):
        return table
    width = table.shape[1]
    cls, grid = table[:1], table[1:]
    grid = grid.float().reshape(1, src_rows, src_cols, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst_grid), mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(dst_grid[0] * dst_grid[1], width).to(table.dtype)
    return torch.cat([cls, grid], dim=0)


def _source_grid(
    state: Mapping[str, Tensor], dst_grid: tuple[int, int], file: str | Path
) -> tuple[int, int]:
    """The grid of the checkpoint's visual positional table: ``visual.grid_size`` if written,
    else square (OpenAI and open_clip checkpoints), else the target grid if the count matches."""
    rows = state["visual.positional_embedding"].shape[0] - 1
    if GRID_KEY in state:
        grid = tuple(int(v) for v in state[GRID_KEY].tolist())
        if len(grid) != 2 or grid[0] * grid[1] != rows:
            raise WeightsError(
                file, f"{GRID_KEY} {grid} does not match {rows} positional rows (+1 CLS)"
            )
        return grid  # type: ignore[return-value]
    side = math.isqrt(rows)
    if side * side == rows:
        return (side, side)
    if rows == dst_grid[0] * dst_grid[1]:
        return tuple(dst_grid)  # type: ignore[return-value]
    raise WeightsError(
        file,
        f"cannot tell the grid of visual.positional_embedding ({rows} rows + CLS is not square "
        f"and has no {GRID_KEY} key), so it cannot be resized to {tuple(dst_grid)}",
    )


def load_clip_state_dict(
    path: str | Path,
    grid: tuple[int, int] | None = None,
    pos_interp: str = "bilinear",
) -> dict[str, Tensor]:
    """Read a local CLIP checkpoint and return it in the backbone's layout.

    With ``grid`` (rows, cols), the visual positional embedding is resized to it with
    ``pos_interp`` (``"bilinear"`` or ``"bicubic"``).
    """
    if pos_interp not in POS_INTERP_MODES:
        raise ValueError(f"pos_interp must be one of {POS_INTERP_MODES}, got {pos_interp!r}")
    raw = read_checkpoint(path)
    state = convert_state_dict(raw, file=path)
    if grid is not None:
        src = _source_grid(raw, tuple(grid), path)
        try:
            state["visual.positional_embedding"] = resize_pos_embed(
                state["visual.positional_embedding"], src, tuple(grid), mode=pos_interp
            )
        except ValueError as err:
            raise WeightsError(path, str(err)) from err
    return state


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_pretrained(
    backbone: CLIPBackbone, path: str | Path, pos_interp: str = "bilinear"
) -> CLIPBackbone:
    """Load a local CLIP checkpoint into ``backbone`` strictly (no missing, unexpected or
    mis-shaped key), resizing the positional embedding to ``backbone.grid``."""
    state = load_clip_state_dict(path, grid=backbone.grid, pos_interp=pos_interp)
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        raise WeightsError(
            path,
            f"does not fit backbone {backbone.name!r} ({'; '.join(parts)}). {_WHERE_TO_GET}",
        )
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if mismatched:
        raise WeightsError(
            path,
            f"shapes do not fit backbone {backbone.name!r} (is it the right architecture?): "
            f"{_listing(mismatched)}",
        )
    backbone.load_state_dict(state, strict=True)
    return backbone


def backbone_state_dict_openai_layout(backbone: CLIPBackbone) -> dict[str, Tensor]:
    """The backbone's weights in OpenAI's layout: packed ``attn.in_proj_weight``/``in_proj_bias``
    (q, k, v stacked), text keys at the top level, plus ``visual.grid_size``. Loads back through
    :func:`load_pretrained`. LoRA must be merged first (unmerged adapters would be lost)."""
    state = backbone.state_dict()
    adapter_keys = [k for k in state if "lora_" in k or "base_layer" in k]
    if adapter_keys:
        raise ValueError(
            "backbone has unmerged LoRA layers (e.g. "
            f"{adapter_keys[0]}); merge them before saving in the OpenAI layout"
        )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".attn.k_proj." in key or ".attn.v_proj." in key:
            continue  # packed together with q_proj below
        if ".attn.q_proj." in key:
            stem, suffix = key.split(".attn.q_proj.")
            value = torch.cat(
                [state[f"{stem}.attn.{name}.{suffix}"] for name in ("q_proj", "k_proj", "v_proj")]
            )
            key = f"{stem}.attn.in_proj_{suffix}"
        if key.startswith("text."):
            key = key[len("text."):]
        out[key] = value.detach().clone()
    out[GRID_KEY] = torch.tensor(backbone.grid, dtype=torch.long)
    return out
