"""Optimiser parameter groups (method.md 3.2): the reference's name rule, or groups by module.

``optim.groups: reference`` (the ``irra`` and ``iclf_release`` presets) reproduces IRRA's
``solver/build.py``, shared by the released ICLF. It looks at each parameter's name *in the reference
model* (:func:`iclf.models.reference.reference_name`: ``base_model.visual...``, ``cross_attn...``,
``cross_modal_transformer...``, ``ln_pre_t``, ``mlm_head...``, ``itm_head.0...``, ``classifier...``,
``temp``) and applies these rules in order, a later one overriding an earlier one:

====================================  ===========================  ==============
reference name contains               lr                           weight decay
====================================  ===========================  ==============
(every parameter)                     lr                           wd
"cross"                               lr * lr_factor_new           (unchanged)
"bias"                                lr * lr_factor_bias          wd_bias
"classifier" or "mlm_head"            lr * lr_factor_new           (unchanged)
====================================  ===========================  ==============

With the faithful values (lr 1e-5, lr_factor_new 5, lr_factor_bias 2, wd 4e-5, wd_bias 0) that is:
CLIP backbone 1e-5 (biases 2e-5, no decay); cross-former weights 5e-5 but its biases 2e-5 without
decay (rule 2 comes after rule 1); MLM head and ID classifier 5e-5, biases included (rule 3 comes
last; biases keep no decay); ``ln_pre_t`` / ``ln_pre_i`` / ``ln_post`` weights, the ITM head's
weights and ``temp``: 1e-5 with decay 4e-5, because their names hold none of the keywords (the
ITM head's and those LayerNorms' biases: 2e-5, no decay). The reference names exist only for the
reference architecture, so this rule needs full fine-tuning and the ``irra`` fusion style.

``optim.groups: module`` (the ``iclf`` preset and anything with LoRA or another fusion style) goes by
explicit module handles instead of names:

=============  ===========================  ==============
group          lr                           weight decay
=============  ===========================  ==============
backbone       lr                           wd
backbone_bias  lr * lr_factor_bias          wd_bias
new            lr * lr_factor_new           wd
new_bias       lr * lr_factor_new           wd_bias
adapters       lr * lr_factor_adapter       wd
temp           lr                           0
=============  ===========================  ==============

"new" is every module outside the backbone (fusion, MLM head, ITM head, ID classifier): all of them,
LayerNorms and biases included, train at the new-module rate. This differs from the reference for
the fusion biases (reference 2e-5), the fusion's input/output LayerNorm weights and the ITM head
(reference 1e-5), and for ``temp``'s weight decay (reference 4e-5).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn


def _bias_ids(modules: Iterable[nn.Module]) -> set[int]:
    ids = set()
    for root in modules:
        for m in root.modules():
            b = getattr(m, "bias", None)
            if isinstance(b, nn.Parameter):
                ids.add(id(b))
    return ids


def build_param_groups(*, backbone: nn.Module, new_modules: Sequence[nn.Module],
                       temp: nn.Parameter | None, adapters: Sequence[nn.Parameter],
                       lr: float, weight_decay: float, lr_factor_new: float, lr_factor_bias: float,
                       lr_factor_adapter: float, weight_decay_bias: float) -> list[dict]:
    """Trainable parameters sorted into named groups; every trainable parameter lands in one group."""
    adapter_ids = {id(p) for p in adapters}
    bias_ids = _bias_ids([backbone, *new_modules])
    groups: dict[str, dict] = {
        "backbone": {"lr": lr, "weight_decay": weight_decay, "params": []},
        "backbone_bias": {"lr": lr * lr_factor_bias, "weight_decay": weight_decay_bias, "params": []},
        "adapters": {"lr": lr * lr_factor_adapter, "weight_decay": weight_decay, "params": []},
        "new": {"lr": lr * lr_factor_new, "weight_decay": weight_decay, "params": []},
        "new_bias": {"lr": lr * lr_factor_new, "weight_decay": weight_decay_bias, "params": []},
        "temp": {"lr": lr, "weight_decay": 0.0, "params": []},
    }
    seen: set[int] = set()

    def put(name: str, p: nn.Parameter) -> None:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            groups[name]["params"].append(p)

    for p in backbone.parameters():
        if id(p) in adapter_ids:
            put("adapters", p)
        elif id(p) in bias_ids:
            put("backbone_bias", p)
        else:
            put("backbone", p)
    for m in new_modules:
        for p in m.parameters():
            put("new_bias" if id(p) in bias_ids else "new", p)
    if temp is not None:
        put("temp", temp)
    return [{"name": k, **g} for k, g in groups.items() if g["params"]]


def build_optimizer(groups: list[dict], *, name: str, lr: float, eps: float,
                    betas: tuple[float, float], weight_decay: float) -> torch.optim.Optimizer:
    """Adam (L2 coupled into the gradient, as the published code) or AdamW (decoupled decay)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(groups, lr=lr, eps=eps, betas=betas, weight_decay=weight_decay)


# (lr key, weight-decay key) of a parameter under the reference rule, and the multiplier names.
_LR_KEYS = ("lr", "lr*lr_factor_new", "lr*lr_factor_bias")
_WD_KEYS = ("weight_decay", "weight_decay_bias")


def reference_rule(reference_name: str) -> tuple[str, str]:
    """IRRA's ``solver/build.py`` rule on a reference parameter name -> (lr key, weight-decay key):
    ``"lr"``, ``"lr*lr_factor_new"`` or ``"lr*lr_factor_bias"``; ``"weight_decay"`` or
    ``"weight_decay_bias"``. Rules apply in order; a later one overrides an earlier one."""
    lr_key, wd_key = "lr", "weight_decay"
    if "cross" in reference_name:
        lr_key = "lr*lr_factor_new"
    if "bias" in reference_name:
        lr_key, wd_key = "lr*lr_factor_bias", "weight_decay_bias"
    if "classifier" in reference_name or "mlm_head" in reference_name:
        lr_key = "lr*lr_factor_new"
    return lr_key, wd_key


def build_reference_param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]],
                                 reference_name: Callable[[str], str | None], *, lr: float,
                                 weight_decay: float, lr_factor_new: float, lr_factor_bias: float,
                                 weight_decay_bias: float) -> list[dict]:
    """Trainable parameters grouped by the reference rule on their reference names (module doc).

    One group per (lr key, weight-decay key) pair, named ``"<lr key> | <wd key>"``, the base group
    ``"lr | weight_decay"`` first. A trainable parameter without a reference name raises ValueError.
    """
    lr_values = {"lr": lr, "lr*lr_factor_new": lr * lr_factor_new,
                 "lr*lr_factor_bias": lr * lr_factor_bias}
    wd_values = {"weight_decay": weight_decay, "weight_decay_bias": weight_decay_bias}
    groups: dict[tuple[str, str], dict] = {
        (lk, wk): {"name": f"{lk} | {wk}", "lr": lr_values[lk], "weight_decay": wd_values[wk],
                   "params": []} for lk in _LR_KEYS for wk in _WD_KEYS}
    seen: set[int] = set()
    for name, p in named_parameters:
        if not p.requires_grad or id(p) in seen:
            continue
        ref = reference_name(name)
        if ref is None:
            raise ValueError(f"optim.groups=reference: parameter {name} has no name in the reference "
                             "model (LoRA adapters and non-irra fusion styles have none); use "
                             "optim.groups=module")
        seen.add(id(p))
        groups[reference_rule(ref)]["params"].append(p)
    return [g for g in groups.values() if g["params"]]


def param_table(named_parameters: Iterable[tuple[str, nn.Parameter]],
                groups: list[dict]) -> list[dict]:
    """One row per trainable parameter: ``name``, ``group``, ``lr``, ``weight_decay``, ``numel``,
    in the model's parameter order (what ``iclf train --show-param-groups`` prints)."""
    where = {id(p): g for g in groups for p in g["params"]}
    rows = []
    for name, p in named_parameters:
        g = where.get(id(p))
        if g is not None:
            rows.append({"name": name, "group": g["name"], "lr": g["lr"],
                         "weight_decay": g["weight_decay"], "numel": p.numel()})
    return rows
