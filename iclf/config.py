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

from iclf.names import EVAL_METRICS, FUSION_LOSSES, fusion_problem

LOSS_NAMES = ("itc", "sdm", "mlm", "itm", "id")
DATASET_NAMES = ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid")


class ConfigError(ValueError):
    """A configuration problem: ``message`` about ``key`` (a dotted key, or None) in ``source`` (a
    file or another label, or None). ``str(exc)`` is ``"<source>: <key>: <message>"``."""

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None):
        self.message = message
        self.key = key
        self.source = source
        super().__init__(": ".join(str(p) for p in (source, key, message) if p))

    @property
    def detail(self) -> str:
        """``"<key>: <message>"``: the error without its source."""
        return f"{self.key}: {self.message}" if self.key else self.message

    def within(self, source: str | Path) -> ConfigError:
        """The same error, attributed to ``source`` (which replaces any earlier one)."""
        return ConfigError(self.message, key=self.key, source=str(source))


# --------------------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    """The backbone (method.md 1.1-1.2)."""

    backbone: str = "ViT-B-16"
    # Local file with CLIP weights (OpenAI TorchScript archive or a state dict); null = random init.
    pretrained: str | None = None
    # Synthetic default only: pretrain the tiny backbone into `pretrained` when that file is missing.
    build_pretrained: bool = False
    # A published IRRA/ICLF checkpoint (best.pth) to start from: every weight of the model (backbone,
    # fusion, heads) is loaded from it through a strict key mapping (iclf/models/reference.py).
    init_from: str | None = None
    image_size: tuple[int, int] = (384, 128)
    stride: int | None = None
    pos_interp: Literal["bilinear", "bicubic"] = "bilinear"
    # The backbone's MLP activation: quick_gelu for OpenAI's CLIP weights, gelu for every other
    # open_clip ViT-B-16 checkpoint (the file does not record it; see README "Pretrained weights").
    act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    temp_init: float = 0.07


LoraVariant = Literal["lora", "dora", "rslora"]
LoraTarget = Literal["q", "k", "v", "out", "mlp"]
#: Towers of the backbone LoRA can adapt, and the projections it can target in each block
#: (iclf.models.lora maps them onto module names).
LORA_TOWERS: tuple[str, ...] = ("vision", "text")
LORA_TARGETS: tuple[str, ...] = typing.get_args(LoraTarget)


def _default_lora_targets() -> dict[str, tuple[str, ...]]:
    return {"vision": ("q", "k", "v", "out"), "text": ("q", "k", "v", "out")}


@dataclass
class LoraSettings:
    """How the backbone is adapted (method.md 1.7; the defaults are its recommended configuration):
    the ``lora`` section of an experiment and what :func:`iclf.models.lora.apply_lora` takes.

    Attributes:
        rank: LoRA rank r; 0 means full fine-tuning (no adapters, everything trains).
        alpha: LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) for rsLoRA).
        dropout: dropout on the LoRA input (training mode only).
        targets: per tower ("vision", "text"), the projections that get adapters, from
            "q", "k", "v", "out" (attention) and "mlp" (c_fc and c_proj). A tower left out (or
            with an empty list) is frozen.
        variant: "lora", "dora" (peft ``use_dora``) or "rslora" (peft ``use_rslora``).
        train_norms: keep every LayerNorm of the backbone trainable.
        train_proj: keep ``visual.proj`` and ``text.text_projection`` trainable.
        freeze_token_embedding: keep the text tower's token embedding (vocabulary x width: 25 MB of
            the tiny backbone's 30 MB, 40 % of ViT-B/16's text tower) at its pretrained values in
            full fine-tuning (rank 0); its weights are then not in any checkpoint. With LoRA the
            embedding is frozen anyway.

    Invalid values raise :class:`ConfigError` naming the field (``lora.<field>`` in a config).
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    targets: dict[str, list[LoraTarget]] = field(default_factory=_default_lora_targets)
    variant: LoraVariant = "lora"
    train_norms: bool = False
    train_proj: bool = False
    freeze_token_embedding: bool = False

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(msg, key=key)

        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise bad("rank", f"must be >= 0 (0 = full fine-tuning), got {self.rank!r}")
        if not self.alpha > 0:
            raise bad("alpha", f"must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.variant not in typing.get_args(LoraVariant):
            raise bad("variant", f"{self.variant!r} is not one of {typing.get_args(LoraVariant)}")
        if not isinstance(self.targets, Mapping):
            raise bad("targets", f"must map a tower {LORA_TOWERS} to a list of targets, got "
                                 f"{self.targets!r}")
        targets: dict[str, tuple[str, ...]] = {}
        for tower, names in self.targets.items():
            if tower not in LORA_TOWERS:
                raise bad(f"targets.{tower}", f"unknown tower {tower!r}; use one of {LORA_TOWERS}")
            if isinstance(names, str):
                raise bad(f"targets.{tower}", f"must be a list of names, got the string {names!r}")
            names = tuple(names)
            for name in names:
                if name not in LORA_TARGETS:
                    raise bad(f"targets.{tower}", f"unknown target {name!r}; use any of "
                                                  f"{LORA_TARGETS}")
            if len(set(names)) != len(names):
                raise bad(f"targets.{tower}", f"repeats a target: {names}")
            if names:
                targets[tower] = names
        if self.rank > 0 and not targets:
            raise bad("targets", "rank > 0 but the targets name no layer in any tower")
        self.targets = targets

    @property
    def full_finetune(self) -> bool:
        """True when rank is 0 (no adapters; every backbone parameter trains)."""
        return self.rank == 0


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
    eval_ids: int | None = None  # val and test identities each (null: 10% each)


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
    # How each parameter gets its lr and weight decay (iclf/engine/optim.py): "reference" applies
    # IRRA's name rule to the parameter's name in the IRRA/ICLF model (faithful presets; needs full
    # fine-tuning and the irra fusion style); "module" goes by module (backbone / new / adapters).
    groups: Literal["reference", "module"] = "module"


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
    metric: Literal[EVAL_METRICS] = "R1"  # one of iclf.names.EVAL_METRICS
    paper_protocol: bool = False
    batch_size: int = 256


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    output_dir: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings | None = None  # null (or rank 0): full fine-tuning
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
        raise ConfigError(msg, key=key)


def validate(cfg: ExperimentConfig) -> None:
    """Range and cross-field checks. Raises ConfigError naming the key."""
    m = cfg.model
    _check(all(s > 0 for s in m.image_size), "model.image_size", "must be two positive ints (H, W)")
    _check(m.stride is None or m.stride > 0, "model.stride", "must be positive or null")
    _check(m.temp_init > 0, "model.temp_init", "must be > 0")
    _check(not m.build_pretrained or m.pretrained is not None, "model.build_pretrained",
           "needs model.pretrained (the file to build)")
    _check(m.init_from is None or m.pretrained is None, "model.init_from",
           "the IRRA/ICLF checkpoint holds every backbone weight, so model.pretrained would go "
           "unused: set model.pretrained=null")
    fu = cfg.fusion
    _check(0 <= fu.depth <= 24, "fusion.depth", "must be in [0, 24]")
    _check(fu.heads > 0, "fusion.heads", "must be > 0")
    w = cfg.losses.weights
    for n in LOSS_NAMES:
        _check(getattr(w, n) >= 0, f"losses.weights.{n}", "must be >= 0")
    _check(any(getattr(w, n) > 0 for n in LOSS_NAMES), "losses.weights", "at least one loss must be on")
    for n in FUSION_LOSSES:
        problem = fusion_problem([n] if getattr(w, n) > 0 else [], fu.depth)
        _check(problem is None, f"losses.weights.{n}", problem or "")
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
        e = d.synthetic.eval_ids
        _check(e is None or (e >= 1 and 2 * e < d.synthetic.ids), "data.synthetic.eval_ids",
               "must be >= 1 and leave training identities (2 x eval_ids < ids), or null")
    o = cfg.optim
    _check(o.lr > 0, "optim.lr", "must be > 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    _check(o.eps > 0, "optim.eps", "must be > 0")
    _check(all(0 <= b < 1 for b in o.betas), "optim.betas", "must be in [0, 1)")
    for k in ("lr_factor_new", "lr_factor_bias", "lr_factor_adapter"):
        _check(getattr(o, k) > 0, f"optim.{k}", "must be > 0")
    if o.groups == "reference":
        _check(cfg.lora is None or cfg.lora.rank == 0, "optim.groups",
               "'reference' applies IRRA's rule to the reference model's parameter names, which has "
               "no LoRA adapters; use optim.groups=module with lora.rank > 0")
        fusion_built = fu.depth > 0 and (w.mlm > 0 or w.itm > 0)
        _check(not fusion_built or fu.style == "irra", "optim.groups",
               f"'reference' applies IRRA's rule to the reference model's parameter names, which has "
               f"no {fu.style!r} fusion module; use optim.groups=module with fusion.style={fu.style}")
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


def exponent_number(value: Any) -> Any:
    """``value`` as written in YAML, except a number in exponent form that PyYAML (YAML 1.1) reads as
    a string, such as ``1e-6`` or ``5.0E3`` (no dot or no exponent sign): the float it spells.

    For comparisons with values whose type is not declared (spec conditions, baselines); a declared
    ``float`` field accepts any numeric string through :func:`coerce`."""
    if isinstance(value, str) and "e" in value.lower() and _FLOAT_RE.fullmatch(value.strip()):
        return float(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_WHAT = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}


def _expected(tp: Any) -> str:
    """``tp`` in words, for "expected ..." messages."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) in (dict, Mapping):
        return "a mapping"
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return _WHAT.get(tp, _type_name(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, or raise ConfigError naming ``key``.

    Handles dataclasses (strict keys), ``X | None``, unions, ``Literal``, ``list``, ``tuple``,
    ``dict[str, ...]``, ``bool``, ``int``, ``float`` (a YAML string such as ``1e-6``, which PyYAML
    does not read as a number, is accepted) and ``str``; ``Any`` passes through.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError("must not be null", key=key)
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return coerce(value, a, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(non_none) == 1:
            raise errors[0]
        alternatives = " or ".join(_expected(a) for a in non_none)
        raise ConfigError(f"expected {alternatives}, got {value!r}", key=key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{value!r} is not one of {', '.join(map(repr, args))}", key=key)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {type(value).__name__}", key=key)
        return build(tp, value, key)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {type(value).__name__} {value!r}", key=key)
        return {str(k): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {type(value).__name__} {value!r}", key=key)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]
            return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"expected {len(args)} values, got {len(value)}", key=key)
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true/false, got {value!r}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", key=key)
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-5 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", key=key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", key=key)
        return value
    raise ConfigError(f"unsupported type {_type_name(tp)}", key=key)  # pragma: no cover


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from a YAML mapping: unknown keys are errors, every value is
    converted to its field's annotated type (:func:`coerce`), absent keys take their defaults.
    Errors name the key, with ``prefix`` (the section's own key) in front."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key (known keys here: {', '.join(sorted(names))})", key=where)
    kwargs = {}
    for name in (f.name for f in dataclasses.fields(cls) if f.name in data):
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = coerce(data[name], hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a section's own checks (__post_init__) name its field
        raise ConfigError(exc.message, key=".".join(k for k in (prefix, exc.key) if k),
                          source=exc.source) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
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
                raise ConfigError(f"{p} is not a section", key=key)
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


def read_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The YAML mapping in ``path`` (an empty file is an empty mapping); ConfigError naming the file
    when it is missing, not YAML or not a mapping. Every YAML file the project reads goes through it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such {what}", source=str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({exc})", source=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", source=str(path))
    return data


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read an experiment mapping, following ``base:`` (a path relative to the file) recursively.

    A ``base:`` chain that comes back to a file already on it (``a.yaml`` naming itself, or
    a -> b -> a) is a ConfigError naming every file of the loop.
    """
    path = Path(path)
    key = path.resolve()
    if key in _chain:
        loop = [*_chain[_chain.index(key):], key]
        raise ConfigError(f"the base: chain loops: {' -> '.join(str(p) for p in loop)}",
                          source=str(loop[0]))
    data = read_mapping(path)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError("expected a file name", key="base", source=str(path))
        data = deep_merge(read_yaml(path.parent / base, (*_chain, key)), data)
    return data


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """A validated :class:`ExperimentConfig` from experiment data; errors carry ``source``."""
    try:
        cfg = build(ExperimentConfig, data)
        validate(cfg)
    except ConfigError as exc:
        raise exc.within(source) from None
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
