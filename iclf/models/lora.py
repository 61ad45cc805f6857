"""LoRA fine-tuning of the CLIP backbone through ``peft`` (method.md 1.7).

The backbone's attention is written with named ``q_proj/k_proj/v_proj/out_proj`` linears and its
MLP with ``c_fc/c_proj`` (docs/design.md "Backbone"), so every projection is a plain ``nn.Linear``
that ``peft.inject_adapter_in_model`` can wrap. Targets are chosen per tower and resolved to an
explicit list of full module names, so only the intended tower's layers get adapters; the fusion
module and the heads live outside the backbone and always train.

For a targeted ``nn.Linear`` with weight ``W`` (out x in), peft computes

    y = W x + b + s * B A dropout(x),   A: r x in (Kaiming uniform), B: out x r (zeros),

with ``s = alpha / r`` (``"lora"``, ``"dora"``) or ``s = alpha / sqrt(r)`` (``"rslora"``). DoRA
adds a learnable magnitude vector of length ``out``. Rank 0 means full fine-tuning: nothing is
injected and every backbone parameter trains.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from iclf.config import LORA_TARGETS, LORA_TOWERS, LoraSettings  # the one settings class

if TYPE_CHECKING:
    from iclf.models.registry import BackboneSpec

__all__ = [
    "LoraSettings",
    "apply_lora",
    "lora_target_names",
    "adapter_parameters",
    "adapter_state_dict",
    "load_adapter_state_dict",
    "merge_lora",
    "count_trainable",
    "expected_lora_params",
]

# Tower key in LoraSettings.targets -> attribute of the backbone.
TOWERS: dict[str, str] = {"vision": "visual", "text": "text"}
# Short target name -> names of the nn.Linear modules it selects inside each residual block.
TARGET_LAYERS: dict[str, tuple[str, ...]] = {
    "q": ("q_proj",),
    "k": ("k_proj",),
    "v": ("v_proj",),
    "out": ("out_proj",),
    "mlp": ("c_fc", "c_proj"),
}
assert tuple(TOWERS) == LORA_TOWERS and tuple(TARGET_LAYERS) == LORA_TARGETS
ADAPTER_NAME = "default"


def _lora_layer_cls() -> type:
    from peft.tuners.lora import LoraLayer  # imported lazily: peft pulls in transformers

    return LoraLayer


def _lora_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) for every peft LoRA layer inside ``module``."""
    if "peft" not in sys.modules:
        return []  # peft was never imported, so no LoRA layer can exist
    cls = _lora_layer_cls()
    return [(name, m) for name, m in module.named_modules() if isinstance(m, cls)]


def _is_linear(m: nn.Module) -> bool:
    """A plain ``nn.Linear``, or a peft layer that wraps one."""
    if hasattr(m, "get_base_layer"):
        m = m.get_base_layer()
    return isinstance(m, nn.Linear)


def lora_target_names(backbone: nn.Module, settings: LoraSettings) -> list[str]:
    """Full module names (relative to ``backbone``) of the ``nn.Linear`` layers that get adapters.

    Raises ValueError naming the tower and target when a requested target matches no layer.
    """
    names: list[str] = []
    for tower_key, targets in settings.targets.items():
        attr = TOWERS[tower_key]
        tower = getattr(backbone, attr, None)
        if not isinstance(tower, nn.Module):
            raise ValueError(
                f"LoRA target tower {tower_key!r}: the backbone has no module '{attr}'"
            )
        for target in targets:
            found = [
                f"{attr}.{name}"
                for name, m in tower.named_modules()
                if _is_linear(m) and name.rsplit(".", 1)[-1] in TARGET_LAYERS[target]
            ]
            if not found:
                raise ValueError(
                    f"LoRA target {target!r} in tower {tower_key!r} matches no nn.Linear named "
                    f"{TARGET_LAYERS[target]} under backbone.{attr}"
                )
            names.extend(found)
    return sorted(names)


def _norm_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    return [p for m in backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]


def _proj_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    params = []
    for owner, attr in (("visual", "proj"), ("text", "text_projection")):
        p = getattr(getattr(backbone, owner, None), attr, None)
        if not isinstance(p, nn.Parameter):
            raise ValueError(f"train_proj: the backbone has no parameter {owner}.{attr}")
        params.append(p)
    return params


def _token_embedding(backbone: nn.Module) -> nn.Parameter:
    embedding = getattr(getattr(backbone, "text", None), "token_embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise ValueError("freeze_token_embedding: the backbone has no text.token_embedding")
    return embedding.weight


def apply_lora(backbone: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA adapters into ``backbone`` in place; set which parameters train (method.md 1.7).

    With ``settings.rank == 0`` nothing is injected and every backbone parameter trains (full
    fine-tuning), but the text token embedding with ``freeze_token_embedding``. Otherwise the
    targeted linears get peft LoRA layers (B zero-initialised, so the outputs are unchanged), and
    the backbone is frozen except the adapters, plus the LayerNorms (``train_norms``) and the two
    output projections (``train_proj``). Returns ``backbone``.
    """
    if _lora_layers(backbone):
        raise ValueError("apply_lora: the backbone already has LoRA adapters")
    if settings.full_finetune:
        for p in backbone.parameters():
            p.requires_grad_(True)
        if settings.freeze_token_embedding:
            _token_embedding(backbone).requires_grad_(False)
        return backbone

    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_names(backbone, settings),
        bias="none",
        use_dora=settings.variant == "dora",
        use_rslora=settings.variant == "rslora",
        init_lora_weights=True,
    )
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)

    for p in backbone.parameters():
        p.requires_grad_(False)
    trainable = adapter_parameters(backbone)
    if settings.train_norms:
        trainable += _norm_parameters(backbone)
    if settings.train_proj:
        trainable += _proj_parameters(backbone)
    for p in trainable:
        p.requires_grad_(True)
    return backbone


def adapter_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters (A, B and the DoRA magnitude) inside ``module``, for the optimiser."""
    params: dict[int, nn.Parameter] = {}  # by id: peft's DoRA ModuleDict yields its vector twice
    for _, layer in _lora_layers(module):
        for attr in layer.adapter_layer_names:
            for p in getattr(layer, attr).parameters():
                params.setdefault(id(p), p)
    return list(params.values())


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights of ``module``, keyed as in ``module.state_dict()`` (copies)."""
    ids = {id(p) for p in adapter_parameters(module)}
    return {
        name: p.detach().clone()
        for name, p in module.named_parameters(remove_duplicate=False)
        if id(p) in ids
    }


def load_adapter_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load adapter weights saved by :func:`adapter_state_dict` into ``module`` (strict).

    ``module`` must already have adapters injected with the same settings (``apply_lora``). Missing
    or unexpected keys and shape mismatches raise ValueError listing them.
    """
    current = dict(
        (name, p)
        for name, p in module.named_parameters(remove_duplicate=False)
        if id(p) in {id(q) for q in adapter_parameters(module)}
    )
    if not current:
        raise ValueError(
            "load_adapter_state_dict: the module has no LoRA adapters (call apply_lora first)"
        )
    missing = sorted(set(current) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"adapter state dict does not match the model: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected keys "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    for name, p in current.items():
        value = state_dict[name]
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(
                f"adapter state dict: {name} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(p.shape)} (different rank or targets?)"
            )
    with torch.no_grad():
        for name, p in current.items():
            p.copy_(state_dict[name])


def merge_lora(module: nn.Module, unload: bool = False) -> nn.Module:
    """Merge every LoRA update into its base weight, in place (peft ``merge()``).

    After merging, the layers compute with the merged base weight only. With ``unload=True`` each
    LoRA wrapper is also replaced by its plain base ``nn.Linear``, so the state dict has the
    original backbone keys again. Returns ``module``.
    """
    layers = _lora_layers(module)
    for _, layer in layers:
        if not layer.merged:
            layer.merge()
    if unload:
        for name, layer in layers:
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, child, layer.get_base_layer())
        if hasattr(module, "peft_config"):
            del module.peft_config
    return module


def count_trainable(module: nn.Module) -> int:
    """Number of parameters of ``module`` with ``requires_grad`` (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _tower_layer_shapes(spec: BackboneSpec, tower: str) -> list[tuple[str, int, int]]:
    """(short target, in, out) of every linear in one tower's residual blocks, from the spec."""
    width, layers = (
        (spec.vision_width, spec.vision_layers)
        if tower == "vision"
        else (spec.text_width, spec.text_layers)
    )
    per_block = [
        ("q", width, width),
        ("k", width, width),
        ("v", width, width),
        ("out", width, width),
        ("mlp", width, 4 * width),
        ("mlp", 4 * width, width),
    ]
    return per_block * layers


def expected_lora_params(source: nn.Module | BackboneSpec, settings: LoraSettings) -> int:
    """Closed-form number of LoRA parameters: sum over targeted Linear(in, out) of r (in + out),
    plus ``out`` for the DoRA magnitude vector. Rank 0 gives 0.

    ``source`` is either a :class:`~iclf.models.registry.BackboneSpec` (CLIP blocks with a 4x MLP)
    or a backbone module (shapes read from its linears; it may live on the meta device).
    """
    if settings.full_finetune:
        return 0
    dora = settings.variant == "dora"
    total = 0
    if isinstance(source, nn.Module):
        for name in lora_target_names(source, settings):
            layer = source.get_submodule(name)
            if hasattr(layer, "get_base_layer"):
                layer = layer.get_base_layer()
            total += settings.rank * (layer.in_features + layer.out_features)
            total += layer.out_features if dora else 0
        return total
    for tower, targets in settings.targets.items():
        for target, fan_in, fan_out in _tower_layer_shapes(source, tower):
            if target in targets:
                total += settings.rank * (fan_in + fan_out) + (fan_out if dora else 0)
    return total


