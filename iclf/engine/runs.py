"""A run directory to evaluate: one that ``iclf train`` wrote, or a published IRRA/ICLF one.

* iclf's own: ``configs.yaml`` (an :class:`~iclf.config.ExperimentConfig`) and ``checkpoint/best.pt``
  (trainable weights of the selected epoch; ``checkpoint/state.pt`` for the last one).
* IRRA's and the released ICLF's (anosorae/IRRA, Hmn-92/ICLF): ``configs.yaml`` written by
  ``yaml.dump(vars(args))``, IRRA's flat training arguments (``loss_names``, ``cmt_depth``,
  ``img_size`` as a ``!!python/tuple``, ``stride_size``, ``dataset_name``, ``root_dir``, ...), and
  ``best.pth`` = ``{"model": state_dict, ...}`` (fp16 weights in IRRA's), loaded through the strict key
  mapping of :mod:`iclf.models.reference`. The arguments map onto the ``irra`` preset, or onto
  ``iclf_release`` when ``loss_names`` holds ``itc`` or ``itm``.

:func:`open_run` reads the config and checks that the weights are there before anything else happens
(no data is generated for a config that is not a run's). The YAML is read with a ``SafeLoader``
subclass that builds tuples and nothing else that ``yaml.safe_load`` refuses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from iclf.config import (LOSS_NAMES, ConfigError, ExperimentConfig, config_from_dict, deep_merge,
                         load_config, read_yaml)

__all__ = ["OpenedRun", "open_run", "read_run_yaml", "is_irra_args", "irra_preset",
           "irra_args_to_config", "IRRA_CHECKPOINT"]

IRRA_CHECKPOINT = "best.pth"
#: Keys that make a configs.yaml IRRA's (its argparse namespace), and those the mapping needs.
_IRRA_MARKERS = ("loss_names", "dataset_name")
_IRRA_REQUIRED = ("loss_names", "dataset_name", "img_size", "stride_size")
_PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "presets"


class _RunConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus ``!!python/tuple`` (built as a tuple), which IRRA's
    ``yaml.dump(vars(args))`` writes for ``img_size`` and ``milestones``. Nothing else is added:
    other ``!!python/...`` tags still fail, as in ``yaml.safe_load``."""


_RunConfigLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple",
    lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))


def read_run_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a run's ``configs.yaml`` (iclf's or IRRA's), read safely."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (give RUN_DIR/configs.yaml of a training run)")
    try:
        data = yaml.load(path.read_text(), Loader=_RunConfigLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not a YAML file iclf can read safely "
                          f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def is_irra_args(data: Mapping[str, Any]) -> bool:
    """Whether a configs.yaml mapping is IRRA's/ICLF's flat argument namespace."""
    return all(k in data for k in _IRRA_MARKERS)


def _irra_losses(args: Mapping[str, Any], source: str) -> list[str]:
    raw = args["loss_names"]
    if not isinstance(raw, str):
        raise ConfigError(f"{source}: loss_names: expected a string like 'sdm+mlm+id', got {raw!r}")
    names = [n.strip() for n in raw.split("+") if n.strip()]
    unknown = [n for n in names if n not in LOSS_NAMES]
    if unknown or not names:
        raise ConfigError(f"{source}: loss_names: {unknown[0] if unknown else raw!r} is not a loss "
                          f"iclf implements (known: {', '.join(LOSS_NAMES)})")
    return names


def irra_preset(args: Mapping[str, Any], source: str = "configs.yaml") -> str:
    """The preset an IRRA/ICLF run maps onto: ``iclf_release`` when its losses hold ITC or ITM (the
    released ICLF, or IRRA's ITC-only "CLIP fine-tune" baseline), else ``irra``."""
    return "iclf_release" if {"itc", "itm"} & set(_irra_losses(args, source)) else "irra"


def irra_args_to_config(args: Mapping[str, Any], *, source: str, backbone: str,
                        root_dir: str | None = None) -> ExperimentConfig:
    """IRRA's/ICLF's training arguments -> the ``irra`` or ``iclf_release`` preset with them applied.

    ``backbone`` is the registered backbone the checkpoint holds (its sizes; IRRA names only
    ``pretrain_choice``). Arguments that only concern IRRA's machinery (logging, DDP, resume paths,
    ``output_dir`` of the training machine) are not carried over.
    """
    from iclf.models.registry import get_spec

    source = f"{source} (IRRA format)"
    missing = [k for k in _IRRA_REQUIRED if k not in args]
    if missing:
        raise ConfigError(f"{source}: {missing[0]}: missing (an IRRA configs.yaml has "
                          f"{', '.join(_IRRA_REQUIRED)})")
    losses = _irra_losses(args, source)
    preset = irra_preset(args, source)
    img_size = args["img_size"]
    if not isinstance(img_size, (list, tuple)) or len(img_size) != 2:
        raise ConfigError(f"{source}: img_size: expected (height, width), got {img_size!r}")
    if args.get("text_length", 77) != 77:
        raise ConfigError(f"{source}: text_length: {args['text_length']!r}; iclf's text tower has "
                          "77 positions")
    fused = "mlm" in losses or "itm" in losses
    spec = get_spec(backbone)
    weights = {n: 0.0 for n in LOSS_NAMES}
    for n in losses:
        weights[n] = float(args.get(f"{n}_loss_weight", 1.0)) if n in ("mlm", "id") else 1.0
    over: dict[str, Any] = {
        "name": str(args.get("name", preset)).replace("/", "_") or preset,
        "seed": 1,  # IRRA's train.py: set_seed(1 + rank)
        "model": {"backbone": backbone, "pretrained": None, "build_pretrained": False,
                  "image_size": [int(v) for v in img_size], "stride": int(args["stride_size"]),
                  "act": "quick_gelu"},
        "fusion": {"style": "irra", "depth": int(args.get("cmt_depth", 4)) if fused else 0,
                   "heads": spec.embed_dim // 64 if spec.embed_dim >= 64 else 1},
        "losses": {"weights": weights},
        "data": {"dataset": args["dataset_name"],
                 "root": str(root_dir if root_dir is not None else args.get("root_dir", "data")),
                 "augment": {"flip": True, "pad_crop": bool(args.get("img_aug", False)),
                             "random_erasing": bool(args.get("img_aug", False))},
                 "sampler": "identity" if args.get("sampler") == "identity" else "random"},
        "evaluation": {"paper_protocol": args.get("val_dataset", "test") == "test"},
        # IRRA ran fp16 weights (fp32 LayerNorms), ICLF fp32: evaluate in fp32, not under bf16
        # autocast, whose 8-bit mantissa is coarser than either
        "training": {"precision": "fp32"},
    }
    if args["dataset_name"] == "ICFG-PEDES":
        over["data"]["val_fraction"] = 0.0  # IRRA has no ICFG val split
    for key, section, field in (("batch_size", "data", "batch_size"),
                                ("num_instance", "data", "num_instance"),
                                ("num_workers", "data", "num_workers"),
                                ("test_batch_size", "evaluation", "batch_size"),
                                ("num_epoch", "training", "epochs"),
                                ("warmup_epochs", "schedule", "warmup_epochs"),
                                ("warmup_factor", "schedule", "warmup_factor"),
                                ("target_lr", "schedule", "target_lr"),
                                ("temperature", "losses", "temperature"),
                                ("weight", "losses", "itm_ce_weight"),
                                ("lr", "optim", "lr"),
                                ("weight_decay", "optim", "weight_decay"),
                                ("weight_decay_bias", "optim", "weight_decay_bias"),
                                ("lr_factor", "optim", "lr_factor_new"),
                                ("bias_lr_factor", "optim", "lr_factor_bias")):
        if key in args:
            over.setdefault(section, {})[field] = args[key]
    optimizer = str(args.get("optimizer", "Adam")).lower()
    if optimizer in ("adam", "adamw"):  # IRRA hard-codes eps: 1e-3 for Adam, 1e-8 for AdamW
        over.setdefault("optim", {}).update(name=optimizer, eps=1e-3 if optimizer == "adam" else 1e-8)
    if "alpha" in args and "beta" in args:
        over.setdefault("optim", {})["betas"] = [args["alpha"], args["beta"]]
    data = deep_merge(read_yaml(_PRESETS / f"{preset}.yaml"), over)
    return config_from_dict(data, source)


@dataclass
class OpenedRun:
    """A run ready to evaluate: its config, what it is, and how to put its weights into a model."""

    config: ExperimentConfig
    kind: str  # "iclf" or "irra" (IRRA's or ICLF's published layout)
    weights_file: Path
    load_weights: Callable[[Any], None]


def open_run(config_file: str | Path, *, which: str = "best",
             root_dir: str | None = None) -> OpenedRun:
    """Read ``config_file`` (iclf's or IRRA's format) and find its weights beside it.

    Raises ConfigError for a file that is neither format, and CheckpointError / WeightsError when
    the weights a run needs are not there; both before any data is touched.
    """
    from iclf.engine import checkpoint as ckpt

    config_file = Path(config_file)
    data = read_run_yaml(config_file)
    run_dir = config_file.parent
    if is_irra_args(data):
        from iclf.models.reference import (infer_backbone, load_reference_state_dict,
                                           read_reference_checkpoint)

        weights_file = run_dir / IRRA_CHECKPOINT
        if which != "best":
            raise ckpt.CheckpointError(f"{config_file}: an IRRA/ICLF run directory holds only "
                                       f"{IRRA_CHECKPOINT} (use --checkpoint best)")
        if not weights_file.is_file():
            raise ckpt.CheckpointError(f"{config_file}: an IRRA/ICLF configs.yaml, but no "
                                       f"{IRRA_CHECKPOINT} beside it ({weights_file})")
        state = read_reference_checkpoint(weights_file)
        cfg = irra_args_to_config(data, source=str(config_file), root_dir=root_dir,
                                  backbone=infer_backbone(state, weights_file))

        def load_irra(model) -> None:
            load_reference_state_dict(model, state, weights_file)

        return OpenedRun(cfg, "irra", weights_file, load_irra)

    known = {f.name for f in dataclasses.fields(ExperimentConfig)} | {"base"}
    if not data or not set(data) <= known:
        odd = sorted(set(data) - known)[:4]
        raise ConfigError(
            f"{config_file}: neither an iclf run config (what iclf train writes: name, model, "
            f"losses, ...) nor an IRRA/ICLF one (loss_names, dataset_name, img_size, ...); "
            f"unexpected keys: {', '.join(map(str, odd)) or '(none: the file is empty)'}")
    cfg = load_config(config_file, {"data.root": root_dir} if root_dir is not None else {})
    ckpt_dir = run_dir / "checkpoint"
    weights_file = ckpt_dir / (ckpt.BEST_FILE if which == "best" else ckpt.STATE_FILE)
    if not weights_file.is_file():
        raise ckpt.CheckpointError(
            f"{config_file}: not a trained run's config: no {weights_file.relative_to(run_dir)} "
            "beside it (iclf test evaluates RUN_DIR/configs.yaml of a run iclf train wrote, or "
            "an IRRA/ICLF run directory with best.pth)")

    def load_iclf(model) -> None:
        weights = ckpt.load(weights_file)
        if which != "best":
            weights = weights["model"]
        ckpt.load_trainable_state_dict(model, weights, weights_file)

    return OpenedRun(cfg, "iclf", weights_file, load_iclf)
