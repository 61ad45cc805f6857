"""Checkpoints: written atomically, holding tensors and plain data only, loaded with weights_only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
BEST_FILE = "best.pt"


class CheckpointError(RuntimeError):
    pass


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None


def unreadable(directory: str | Path) -> str | None:
    """Why the checkpoint directory cannot resume a run (a missing, truncated or foreign
    ``state.pt``, or a broken ``best.pt`` beside it), or None when it can."""
    directory = Path(directory)
    try:
        state = load(directory / STATE_FILE)
        if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "rng",
                                                "progress"} <= set(state):
            return f"{directory / STATE_FILE}: not a training state"
        if (directory / BEST_FILE).exists():
            load(directory / BEST_FILE)
    except CheckpointError as exc:
        return str(exc)
    return None


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (adapters, new modules, unfrozen backbone parts), detached."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor],
                              source: str | Path = "<checkpoint>") -> None:
    """Load weights saved by :func:`trainable_state_dict`; every key must be a trainable parameter."""
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the model built from the config "
            f"(missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]})")
    with torch.no_grad():
        for n, t in sd.items():
            if params[n].shape != t.shape:
                raise CheckpointError(f"{source}: {n} has shape {tuple(t.shape)}, "
                                      f"the model wants {tuple(params[n].shape)}")
            params[n].copy_(t)
