"""The published reference model's parameter names: IRRA (anosorae/IRRA) and the released ICLF
(Hmn-92/ICLF), and checkpoints in their layout.

Both codes train one ``nn.Module`` and save ``best.pth = {"model": model.state_dict(), ...}``. Its keys:

=====================================================  ===============================================
reference key                                          project parameter(s)
=====================================================  ===============================================
``base_model.visual.{conv1.weight, class_embedding,    ``backbone.visual.<same>``
positional_embedding, proj, ln_pre.*, ln_post.*}``
``base_model.visual.transformer.resblocks.{i}.*``      ``backbone.visual.transformer.resblocks.{i}.*``
``base_model.{token_embedding.weight,                  ``backbone.text.<same>``
positional_embedding, ln_final.*, text_projection}``
``base_model.transformer.resblocks.{i}.*``             ``backbone.text.transformer.resblocks.{i}.*``
``classifier.{weight, bias}``  (ID loss)               ``classifier.fc.{weight, bias}``
``cross_attn.*``  (MLM; ICLF's ITM shares it)          ``fusion.cross_attn.*``
``cross_modal_transformer.resblocks.{i}.*``            ``fusion.blocks.{i}.*``
``ln_pre_t.*``, ``ln_pre_i.*``, ``ln_post.*``          ``fusion.ln_pre_t.*``, ``fusion.ln_pre_i.*``,
                                                       ``fusion.ln_post.*``
``mlm_head.{dense, ln, fc}.*``                         ``mlm_head.{dense, ln, fc}.*``
``itm_head.{0, 1, 3}.*``  (ICLF)                       ``itm_head.net.{0, 1, 3}.*``
``temp``  (ICLF)                                       ``temp``
=====================================================  ===============================================

Every attention of the reference is an ``nn.MultiheadAttention``: one packed ``attn.in_proj_weight``
(q, k and v rows stacked) and ``attn.in_proj_bias`` where the project has named ``q_proj``,
``k_proj`` and ``v_proj`` linears; ``out_proj`` is the same. Residual blocks use the same names
(``ln_1``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``) on both sides.

IRRA converts its model to fp16 before training (``convert_weights``: the weights and biases of every
Linear, Conv and MultiheadAttention, plus ``proj`` and ``text_projection``), so its checkpoints hold
those in fp16; ICLF's are fp32. ICLF's checkpoints also hold a BERT it builds but never calls
(``text_encoder.*``, ``text_feats_2_bert.weight``, method.md 0.4): those keys are known to be unused
and are skipped; any other key without a counterpart is an error.

The same names drive the reference's learning-rate rule (``optim.groups: reference``): IRRA's
``solver/build.py`` decides each parameter's lr and weight decay by substrings of its name, so the rule
is evaluated on :func:`reference_name`, not on the project's own names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from iclf.models.registry import get_spec, list_backbones
from iclf.models.weights import WeightsError

__all__ = [
    "ReferenceCheckpointError",
    "UNUSED_PREFIXES",
    "reference_name",
    "reference_layout",
    "reference_state_dict",
    "load_reference_state_dict",
    "read_reference_checkpoint",
    "infer_backbone",
    "fp16_in_irra",
]

#: Keys of ICLF's checkpoints that belong to modules it builds but never uses (an unused BERT).
UNUSED_PREFIXES: tuple[str, ...] = ("text_encoder.", "text_feats_2_bert.")
#: The reference's packed attention input projection, in row order.
PACKED = ("q_proj", "k_proj", "v_proj")
#: A parameter the IRRA reference does not have (it is ICLF's); IRRA checkpoints lack it.
OPTIONAL_KEYS = frozenset({"temp"})

# (project name pattern, reference name template), first match wins; names after LoRA's
# ``.base_layer`` is removed and the packed q/k/v projections renamed to ``in_proj``.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), template) for pattern, template in (
        (r"^backbone\.visual\.(.+)$", r"base_model.visual.\1"),
        (r"^backbone\.text\.(token_embedding\.weight|positional_embedding|text_projection"
         r"|ln_final\.(weight|bias)|transformer\..+)$", r"base_model.\1"),
        (r"^fusion\.cross_attn\.(.+)$", r"cross_attn.\1"),
        (r"^fusion\.blocks\.(\d+)\.((ln_1|ln_2|attn|mlp)\..+)$",
         r"cross_modal_transformer.resblocks.\1.\2"),
        (r"^fusion\.(ln_pre_t|ln_pre_i|ln_post)\.(weight|bias)$", r"\1.\2"),
        (r"^mlm_head\.((dense|ln|fc)\.(weight|bias))$", r"mlm_head.\1"),
        (r"^itm_head\.net\.([013]\.(weight|bias))$", r"itm_head.\1"),
        (r"^classifier\.fc\.(weight|bias)$", r"classifier.\1"),
        (r"^temp$", "temp"),
    )
)
_PACKED_RE = re.compile(r"attn\.(q_proj|k_proj|v_proj)\.(weight|bias)$")  # attn. and cross_attn.
_BLOCK_RE = re.compile(r"\.resblocks\.(\d+)\.attn\.in_proj_weight$")


class ReferenceCheckpointError(WeightsError):
    """A reference checkpoint that does not map onto the project's model (one line, naming a key)."""


def _is_adapter(name: str) -> bool:
    return ".lora_" in name or ".lora_magnitude_vector" in name


def reference_name(name: str) -> str | None:
    """The reference's name for the project parameter ``name``, or None when it has none.

    LoRA adapters and the modules the reference does not have (interlaced or bidirectional fusion)
    have none. A LoRA-wrapped linear's ``base_layer`` weight keeps the name of the plain linear.
    """
    if _is_adapter(name):
        return None
    name = name.replace(".base_layer.", ".")
    name = _PACKED_RE.sub(lambda m: f"attn.in_proj_{m.group(2)}", name)
    for pattern, template in _RULES:
        if pattern.match(name):
            return pattern.sub(template, name)
    return None


def _packed_slot(name: str) -> int:
    match = _PACKED_RE.search(name.replace(".base_layer.", "."))
    return PACKED.index(match.group(1)) if match else 0


def reference_layout(model: nn.Module) -> dict[str, list[str]]:
    """Reference key -> the project parameters it holds (q, k, v order for a packed key).

    Every parameter of ``model`` except LoRA adapters must have a reference name; the first that
    has none raises :class:`ReferenceCheckpointError`.
    """
    layout: dict[str, list[tuple[int, str]]] = {}
    for name, _ in model.named_parameters():
        if _is_adapter(name):
            continue
        ref = reference_name(name)
        if ref is None:
            raise ReferenceCheckpointError(
                "<model>", f"parameter {name} has no counterpart in the IRRA/ICLF reference model "
                "(only the irra fusion style, the MLM/ITM/ID heads and the CLIP backbone have one)")
        layout.setdefault(ref, []).append((_packed_slot(name), name))
    return {ref: [n for _, n in sorted(parts)] for ref, parts in layout.items()}


def fp16_in_irra(model: nn.Module) -> set[str]:
    """Project parameters that IRRA's ``convert_weights`` stores in fp16: Linear and Conv weights
    and biases (its MultiheadAttention projections among them), ``proj`` and ``text_projection``."""
    out = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            for p_name, _ in module.named_parameters(recurse=False):
                out.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    for name, _ in model.named_parameters():
        if name.endswith(("visual.proj", "text.text_projection")):
            out.add(name)
    return out


def reference_state_dict(model: nn.Module, *, fp16: bool = False) -> dict[str, Tensor]:
    """The model's weights under the reference's keys (the inverse of
    :func:`load_reference_state_dict`), packed q/k/v included. ``fp16=True`` stores what IRRA stores
    in fp16 in fp16 (IRRA's checkpoints); the rest stays as it is. LoRA must be merged first."""
    params = dict(model.named_parameters())
    if any(_is_adapter(n) for n in params):
        raise ValueError("the model has unmerged LoRA adapters; merge them (merge_lora) first")
    halves = fp16_in_irra(model) if fp16 else set()
    out: dict[str, Tensor] = {}
    for ref, names in reference_layout(model).items():
        tensors = [params[n].detach() for n in names]
        value = torch.cat(tensors, dim=0) if len(tensors) > 1 else tensors[0]
        out[ref] = value.clone().half() if names[0] in halves else value.clone()
    return out


def load_reference_state_dict(model: nn.Module, state: Mapping[str, Tensor],
                              source: str | Path = "<checkpoint>") -> None:
    """Load a reference state dict into ``model`` strictly.

    Every key must map onto the model (:data:`UNUSED_PREFIXES` excepted) with the right shape, and
    every non-adapter parameter must receive a value (``temp`` excepted: IRRA has none, and the
    losses of an IRRA model do not use it). fp16 tensors are cast to the model's dtype. The first
    problem raises :class:`ReferenceCheckpointError` naming the key; nothing is loaded then.
    """
    layout = reference_layout(model)
    params = dict(model.named_parameters())
    plan: list[tuple[list[str], Tensor]] = []
    for key, value in state.items():
        if key.startswith(UNUSED_PREFIXES):
            continue
        if key not in layout:
            raise ReferenceCheckpointError(
                source, f"key {key!r} does not map onto the model built from the config (no "
                "parameter of it has that reference name); is the config's loss list or fusion "
                "depth the one this checkpoint was trained with?")
        names = layout[key]
        want = tuple(params[names[0]].shape) if len(names) == 1 else \
            (sum(params[n].shape[0] for n in names), *params[names[0]].shape[1:])
        if tuple(value.shape) != tuple(want):
            raise ReferenceCheckpointError(
                source, f"key {key!r} has shape {tuple(value.shape)}, the model wants "
                f"{tuple(want)} ({names[0]}){_shape_hint(key)}")
        plan.append((names, value))
    missing = [k for k in layout if k not in state and k not in OPTIONAL_KEYS]
    if missing:
        raise ReferenceCheckpointError(
            source, f"the model's {missing[0]!r} ({layout[missing[0]][0]}) is not in the checkpoint "
            f"({len(missing)} such keys); is the config's loss list or fusion depth the one this "
            "checkpoint was trained with?")
    with torch.no_grad():
        for names, value in plan:
            parts = value.split([params[n].shape[0] for n in names], dim=0) \
                if len(names) > 1 else (value,)
            for n, part in zip(names, parts):
                params[n].copy_(part.to(params[n].dtype))


def _shape_hint(key: str) -> str:
    if key.startswith("classifier."):
        return ("; the ID classifier has one row per training identity: the checkpoint was trained "
                "on a dataset with another number of training identities than this data root holds")
    if key.endswith("visual.positional_embedding"):
        return "; the image size or stride differs from the one it was trained at"
    return ""


def read_reference_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict in an IRRA/ICLF ``best.pth`` (``{"model": state_dict, ...}``; a DDP
    ``module.`` prefix is removed), read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceCheckpointError(path, "checkpoint file not found (an IRRA/ICLF run directory "
                                             "holds best.pth next to configs.yaml)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file
        raise ReferenceCheckpointError(
            path, f"not a readable checkpoint ({type(exc).__name__}: {str(exc)[:160]})") from None
    state = obj.get("model") if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ReferenceCheckpointError(
            path, "not an IRRA/ICLF checkpoint: expected {'model': state_dict of tensors}")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if "base_model.visual.conv1.weight" not in state:
        raise ReferenceCheckpointError(
            path, "not an IRRA/ICLF checkpoint: no base_model.visual.conv1.weight key")
    return state


def infer_backbone(state: Mapping[str, Tensor], source: str | Path = "<checkpoint>") -> str:
    """The registered backbone whose sizes the reference state dict has (as IRRA reads them)."""
    try:
        found = {
            "vision_width": state["base_model.visual.conv1.weight"].shape[0],
            "patch_size": state["base_model.visual.conv1.weight"].shape[-1],
            "vision_layers": sum(1 for k in state if k.startswith("base_model.visual.")
                                 and _BLOCK_RE.search(k)),
            "embed_dim": state["base_model.text_projection"].shape[1],
            "text_width": state["base_model.ln_final.weight"].shape[0],
            "text_layers": sum(1 for k in state if k.startswith("base_model.transformer.")
                               and _BLOCK_RE.search(k)),
            "vocab_size": state["base_model.token_embedding.weight"].shape[0],
            "context_length": state["base_model.positional_embedding"].shape[0],
        }
    except KeyError as exc:
        raise ReferenceCheckpointError(source, f"not an IRRA/ICLF checkpoint: no {exc.args[0]} "
                                               "key") from None
    for name in list_backbones():
        spec = get_spec(name)
        if all(getattr(spec, k) == v for k, v in found.items()):
            return name
    sizes = ", ".join(f"{k} {v}" for k, v in found.items())
    raise ReferenceCheckpointError(
        source, f"its CLIP backbone ({sizes}) matches no registered backbone "
                f"({', '.join(list_backbones())})")
