"""Optimiser parameter groups from explicit module handles (method.md 3.2), never from name substrings.

Groups (base lr ``lr``, weight decay ``wd``):

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

With the faithful defaults (lr 1e-5, factors 5 and 2, wd 4e-5, bias wd 0) the backbone trains at 1e-5,
its biases at 2e-5 without decay, and the fusion module, MLM head and ID classifier at 5e-5 (biases
without decay), as in the published code. One deliberate difference: the published code gives the ITM
head and the fusion LayerNorms the base lr only because their *names* miss the keywords; here every
new module gets the new-module factor. ``temp`` keeps the base lr, without weight decay.
"""

from __future__ import annotations

from typing import Iterable, Sequence

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
