"""The experiment configuration: one typed schema, loaded from YAML, validated at the boundary.

A run is described by an :class:`ExperimentConfig`. It is built from a YAML file (which may name a
``base:`` file it extends) plus ``key=value`` overrides with dotted keys. Unknown keys, wrong types and
out-of-range values raise :class:`ConfigError` naming the key and the file. The resolved config is
saved with every run as ``configs.yaml`` and is enough to rebuild it (:func:`load_config` on that file).
"""

from __future__ import annotations

import copy
import re
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

LOSS_NAMES = ("itc", "sdm", "mlm", "itm", "id")
DATASET_NAMES = ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid")
METRIC_NAMES = ("R1", "R5", "R10", "mAP", "mINP")


class ConfigError(ValueError):
    """A configuration problem, naming the key and (when known) the file."""


# --------------------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    """The backbone (method.md 1.1-1.2)."""

    backbone: str = "ViT-B-16"
    # Local file with CLIP weights (OpenAI TorchScript archive or a state dict); null = random init.
    pretrained: str | None = None
    # Synthetic default only: pretrain the tiny backbone into `pretrained` when that file is missing.
    build_pretrained: bool = False
    image_size: tuple[int, int] = (384, 128)
    stride: int | None = None
    pos_interp: Literal["bilinear", "bicubic"] = "bilinear"
    temp_init: float = 0.07


@dataclass
class LoraTargets:
    vision: list[Literal["q", "k", "v", "out", "mlp"]] = field(
        default_factory=lambda: ["q", "k", "v", "out"])
    text: list[Literal["q", "k", "v", "out", "mlp"]] = field(
        default_factory=lambda: ["q", "k", "v", "out"])


@dataclass
class LoraConfig:
    """LoRA on the backbone (method.md 1.7). rank 0 means full fine-tuning."""

    rank: int = 0
    alpha: float = 32.0
    dropout: float = 0.1
    variant: Literal["lora", "dora", "rslora"] = "lora"
    targets: LoraTargets = field(default_factory=LoraTargets)
    train_norms: bool = True
    train_proj: bool = True


@dataclass
class FusionConfig:
    """The cross-modal fusion module shared by MLM and ITM (method.md 1.4, 1.6)."""

    style: Literal["irra", "interlaced", "bidirectional"] = "irra"
    depth: int = 4
    heads: int = 8


@dataclass
class LossWeights:
    itc: float = 0.0
    sdm: float = 0.0
    mlm: float = 0.0
    itm: float = 0.0
    id: float = 0.0


@dataclass
class LossConfig:
    """Which losses run and their weights (method.md 2). A weight of 0 disables a loss."""

    weights: LossWeights = field(default_factory=LossWeights)
    itm_ce_weight: float = 0.9
    intra_alpha: float = 0.4
    temperature: float = 0.02


@dataclass
class MaskingConfig:
    """MLM masking (method.md 2.3)."""

    rate: float = 0.15
    mask_prob: float = 0.8
    random_prob: float = 0.1
    mask_global_text: bool = True


@dataclass
class AugmentConfig:
    """Training image augmentation (method.md 3.1); each step can be switched off."""

    flip: bool = True
    pad_crop: bool = True
    random_erasing: bool = True


@dataclass
class SyntheticConfig:
    """Generate the synthetic dataset into data.root when it is not there yet."""

    ids: int = 200
    images_per_id: int = 4
    seed: int = 0


@dataclass
class DataConfig:
    dataset: Literal["CUHK-PEDES", "ICFG-PEDES", "RSTPReid"] = "CUHK-PEDES"
    root: str = "data"
    synthetic: SyntheticConfig | None = None
    # ICFG-PEDES only (it has no val split): the fraction of training identities held out for val.
    val_fraction: float | None = None
    split_seed: int = 0
    verify_images: bool = False
    # Decoded-image cache (iclf.data.cache): "off" decodes every JPEG every epoch; "auto" decodes and
    # resizes the training images once into <root>/.iclf-cache/ (memory-mapped, shared by the trials
    # of a sweep; falls back to decoding when that directory cannot be written); or a directory.
    # The batches are bit-identical either way. (YAML reads a bare off/on as false/true: both mean
    # off/auto here.)
    image_cache: str | bool = "auto"
    batch_size: int = 64
    num_workers: int = 4
    sampler: Literal["random", "identity"] = "random"
    num_instance: int = 4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)

    def __post_init__(self) -> None:
        if isinstance(self.image_cache, bool):
            self.image_cache = "auto" if self.image_cache else "off"


@dataclass
class OptimConfig:
    """Optimiser and parameter groups (method.md 3.2)."""

    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-5
    weight_decay: float = 4e-5
    eps: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    lr_factor_new: float = 5.0
    lr_factor_bias: float = 2.0
    lr_factor_adapter: float = 1.0
    weight_decay_bias: float = 0.0


@dataclass
class ScheduleConfig:
    """Per-epoch warm-up + cosine (method.md 3.3)."""

    warmup_epochs: int = 5
    warmup_factor: float = 0.1
    target_lr: float = 0.0


@dataclass
class TrainingConfig:
    epochs: int = 60
    grad_clip: float | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    deterministic: bool = False
    max_steps_per_epoch: int | None = None


@dataclass
class EvaluationConfig:
    eval_period: int = 1
    metric: Literal["R1", "R5", "R10", "mAP", "mINP"] = "R1"
    paper_protocol: bool = False
    batch_size: int = 256


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    @property
    def run_dir(self) -> Path:
        """Where this run writes: ``<output_dir>/<name>``."""
        return Path(self.output_dir) / self.name

    @property
    def enabled_losses(self) -> list[str]:
        return [n for n in LOSS_NAMES if getattr(self.losses.weights, n) > 0]


# ----------------------------------------------------------------------------- range checks


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: ExperimentConfig) -> None:
    """Range and cross-field checks. Raises ConfigError naming the key."""
    m = cfg.model
    _check(all(s > 0 for s in m.image_size), "model.image_size", "must be two positive ints (H, W)")
    _check(m.stride is None or m.stride > 0, "model.stride", "must be positive or null")
    _check(m.temp_init > 0, "model.temp_init", "must be > 0")
    _check(not m.build_pretrained or m.pretrained is not None, "model.build_pretrained",
           "needs model.pretrained (the file to build)")
    lo = cfg.lora if cfg.lora is not None else LoraConfig(rank=0)
    _check(lo.rank >= 0, "lora.rank", "must be >= 0 (0 = full fine-tuning)")
    _check(lo.alpha > 0, "lora.alpha", "must be > 0")
    _check(0 <= lo.dropout < 1, "lora.dropout", "must be in [0, 1)")
    _check(lo.rank == 0 or bool(lo.targets.vision or lo.targets.text), "lora.targets",
           "LoRA needs at least one target")
    fu = cfg.fusion
    _check(0 <= fu.depth <= 24, "fusion.depth", "must be in [0, 24]")
    _check(fu.heads > 0, "fusion.heads", "must be > 0")
    w = cfg.losses.weights
    for n in LOSS_NAMES:
        _check(getattr(w, n) >= 0, f"losses.weights.{n}", "must be >= 0")
    _check(any(getattr(w, n) > 0 for n in LOSS_NAMES), "losses.weights", "at least one loss must be on")
    for n in ("mlm", "itm"):
        _check(getattr(w, n) == 0 or fu.depth > 0, f"losses.weights.{n}",
               f"the {n.upper()} loss needs the fusion module, but fusion.depth is 0; "
               f"set losses.weights.{n}=0 or fusion.depth>=1")
    _check(0 <= cfg.losses.itm_ce_weight <= 1, "losses.itm_ce_weight", "must be in [0, 1]")
    _check(0 <= cfg.losses.intra_alpha <= 1, "losses.intra_alpha", "must be in [0, 1]")
    _check(cfg.losses.temperature > 0, "losses.temperature", "must be > 0")
    d = cfg.data
    if d.dataset == "ICFG-PEDES":
        _check(d.val_fraction is not None and 0 <= d.val_fraction < 1, "data.val_fraction",
               "must be in [0, 1) for ICFG-PEDES (the share of training identities held out for val)")
    else:
        _check(d.val_fraction is None, "data.val_fraction",
               f"only applies to ICFG-PEDES; {d.dataset} ships its own val split (leave it null)")
    _check(bool(d.image_cache.strip()), "data.image_cache", "must be off, auto or a directory")
    _check(d.batch_size >= 2, "data.batch_size", "must be >= 2")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(d.num_instance >= 1, "data.num_instance", "must be >= 1")
    _check(d.sampler != "identity" or d.batch_size % d.num_instance == 0, "data.num_instance",
           "data.batch_size must be a multiple of data.num_instance for the identity sampler")
    mk = d.masking
    _check(0 < mk.rate < 1, "data.masking.rate", "must be in (0, 1)")
    _check(0 <= mk.mask_prob <= 1, "data.masking.mask_prob", "must be in [0, 1]")
    _check(0 <= mk.random_prob <= 1 and mk.mask_prob + mk.random_prob <= 1,
           "data.masking.random_prob", "must be in [0, 1] with mask_prob + random_prob <= 1")
    if d.synthetic is not None:
        _check(d.synthetic.ids >= 10, "data.synthetic.ids", "must be >= 10")
        _check(d.synthetic.images_per_id >= 2, "data.synthetic.images_per_id", "must be >= 2")
    o = cfg.optim
    _check(o.lr > 0, "optim.lr", "must be > 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(o.eps > 0, "optim.eps", "must be > 0")
    _check(all(0 <= b < 1 for b in o.betas), "optim.betas", "must be in [0, 1)")
    for k in ("lr_factor_new", "lr_factor_bias", "lr_factor_adapter"):
        _check(getattr(o, k) > 0, f"optim.{k}", "must be > 0")
    s = cfg.schedule
    _check(s.warmup_epochs >= 0, "schedule.warmup_epochs", "must be >= 0")
    _check(0 < s.warmup_factor <= 1, "schedule.warmup_factor", "must be in (0, 1]")
    t = cfg.training
    _check(t.epochs >= 1, "training.epochs", "must be >= 1")
    _check(s.warmup_epochs < t.epochs, "schedule.warmup_epochs", "must be < training.epochs")
    _check(t.grad_clip is None or t.grad_clip > 0, "training.grad_clip", "must be > 0 or null")
    _check(t.max_steps_per_epoch is None or t.max_steps_per_epoch >= 1,
           "training.max_steps_per_epoch", "must be >= 1 or null")
    e = cfg.evaluation
    _check(e.eval_period >= 1, "evaluation.eval_period", "must be >= 1")
    _check(e.batch_size >= 1, "evaluation.batch_size", "must be >= 1")
    _check(bool(cfg.name) and "/" not in cfg.name, "name", "must be a non-empty name without '/'")


# -------------------------------------------------------------------- dict <-> dataclass


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null")
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-5 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key (known keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for name in (f.name for f in dataclasses.fields(cls) if f.name in data):
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(data[name], hints[name], key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value} (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating mappings on the way."""
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None else nxt
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {p} is not a section")
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "lora.rank=8"]`` -> {"optim.lr": 0.0003, "lora.rank": 8} (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: not a YAML value ({exc})") from None
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, following ``base:`` (a path relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: expected a file name")
        data = deep_merge(read_yaml(path.parent / base), data)
    return data


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> ExperimentConfig:
    try:
        cfg = _build(ExperimentConfig, data)
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> ExperimentConfig:
    """Load an experiment file plus ``key=value`` overrides into a validated config."""
    data = read_yaml(path)
    over = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
    for key, value in over.items():
        set_dotted(data, key, value)
    source = str(path) + (" (with overrides)" if over else "")
    return config_from_dict(data, source)


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config (atomically) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path
