"""The ablation spec: a base experiment, a search space, and how to search it (``ablations/*.yaml``).

A spec is data, validated like an experiment config: unknown keys, wrong types and impossible values
raise :class:`~iclf.config.ConfigError` naming the file and the key. Every parameter of the space is
a dotted key of :class:`~iclf.config.ExperimentConfig`, and every value it can take is checked by
building the experiment config with it, so a spec that would only fail inside a trial fails here.

Layout (every key but ``name``, ``base`` and ``space`` optional)::

    name: lora_rank
    base: ../experiments/iclf_cuhk.yaml       # experiment file, relative to the spec
    overrides: {training.epochs: 60}          # dotted experiment keys
    space:                                    # parameter -> distribution, in sampling order
      lora.rank: {grid: [0, 4, 8]}            # grid | choice: lists; uniform | loguniform | int: [lo, hi]
      lora.alpha: {choice: [16, 32], if: {lora.rank: {gt: 0}}}   # conditional on earlier parameters
    when:                                     # derived settings, applied to each trial's config
      - if: {fusion.depth: 0}
        set: {losses.weights.mlm: 0, losses.weights.itm: 0}
    search: {algorithm: grid, seed: 0}        # grid | random | tpe
    scheduler: {name: fifo}                   # fifo | asha (grace_period, reduction_factor) on epochs
    num_samples: 1                            # configurations drawn (random, tpe); 1 for grid
    seeds: [0, 1, 2]                          # every configuration runs once per seed
    metric: val/R1                            # a validation metric; the search never sees test
    mode: max
    resources: {cpu: 1, gpu: auto}            # per trial; auto = 1 GPU when the cluster has GPUs;
                                              # 0.5 / 0.25: two / four trials share one GPU
    max_concurrent_trials: null
    max_failures: 1                           # retries per trial (from its last checkpoint)
    storage_path: runs/ray                    # relative to the working directory
    tracking: {uri: null, experiment: null}   # null: sqlite runs/mlflow.db, experiment = sweep name
    baseline: {lora.rank: 0}                  # the configuration the analysis compares against
    smoke: {training.epochs: 1, seeds: [0]}   # --smoke: spec keys (base too) and experiment keys
    variants: {tpe: {search: {algorithm: tpe}, space: {...}}}   # named alternatives that replace
                                              # whole top-level keys; chosen with variant=tpe
    variant: null                             # which variant runs by default

Condition syntax (``if:`` of a parameter or of a ``when`` rule): ``{key: value}`` tests equality;
``{key: {gt: 0}}`` uses an operator (eq, ne, gt, ge, lt, le, in, not_in); a mapping is always read
as operators, so compare with a mapping value as ``{key: {eq: {...}}}``. All conditions must hold.
Numbers such as ``1e-6``, which PyYAML reads as strings, are numbers everywhere: range bounds and
ordering conditions are floats, equality conditions and ``in`` lists compare them as the numbers they
spell, baseline values become floats; grid and choice values are kept as written.
A parameter's ``if:`` may only name parameters listed before it; when it does not hold the parameter
is left out of the trial (the experiment's value stands). A rule's ``if:`` is evaluated on the trial's
experiment config after the parameters are set. A rule may not set a parameter the trial drew (it
would be logged with a value it never trained with): give the parameter an ``if:`` instead; checked
at load time on every configuration of a grid or random search, and on 200 seeded draws for TPE.

Seeds with TPE: each suggested configuration runs once per seed through Ray's ``Repeater`` (the
searcher sees the mean over seeds). Ray's documentation rules out combining ``Repeater`` with an
early-stopping scheduler, so TPE + ASHA takes a single seed (the search phase); confirm the winners
with a grid over seeds afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import random
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from iclf.config import (
    ConfigError,
    ExperimentConfig,
    coerce,
    config_from_dict,
    exponent_number,
    parse_overrides,
    read_mapping,
    read_yaml,
    set_dotted,
)
from iclf.names import PARAM_PREFIX, VAL_METRICS

PARAM_KINDS = ("grid", "choice", "uniform", "loguniform", "int")
OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le", "in", "not_in")
# Experiment keys that hold paths: made absolute on the driver (Tune changes a trial's cwd).
PATH_KEYS = ("output_dir", "data.root", "model.pretrained", "data.image_cache")
# Values of a path key that are settings, not paths (data.image_cache: off | auto | a directory;
# YAML reads a bare off/on as false/true, which are never paths either).
PATH_KEYWORDS = {"data.image_cache": ("off", "auto")}

_MISSING = object()


# ------------------------------------------------------------------------------ small pieces


def get_dotted(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; ``default`` (or KeyError) when a part is missing."""
    cur: Any = data
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            if default is _MISSING:
                raise KeyError(key)
            return default
        cur = cur[part]
    return cur


def _same(a: Any, b: Any) -> bool:
    """Equality that treats 1 and 1.0 alike but not True and 1, and reads an exponent number that
    PyYAML left a string (``'1e-4'``) as the number it spells."""
    a, b = exponent_number(a), exponent_number(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


@dataclass(frozen=True)
class Condition:
    """One comparison of a config value (or a parameter) with a constant."""

    key: str
    op: str
    value: Any

    def holds(self, values: Mapping[str, Any], *, dotted: bool = True) -> bool:
        """Evaluate on a nested config dict (``dotted``) or on a flat {param: value} mapping."""
        if dotted:
            current = get_dotted(values, self.key, None)
        else:
            current = values.get(self.key)
        v = self.value
        current = exponent_number(current)
        if self.op == "eq":
            return _same(current, v)
        if self.op == "ne":
            return not _same(current, v)
        if self.op == "in":
            return any(_same(current, x) for x in v)
        if self.op == "not_in":
            return not any(_same(current, x) for x in v)
        if current is None or isinstance(current, (bool, str, list, dict)):
            return False
        return {"gt": current > v, "ge": current >= v, "lt": current < v, "le": current <= v}[self.op]

    def describe(self) -> str:
        return f"{self.key} {self.op} {self.value!r}"


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a dotted experiment key and its distribution."""

    key: str
    kind: Literal["grid", "choice", "uniform", "loguniform", "int"]
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    conditions: tuple[Condition, ...] = ()

    @property
    def finite(self) -> bool:
        return self.kind in ("grid", "choice", "int")

    def all_values(self) -> list[Any]:
        """Every value of a finite parameter (an ``int`` range expanded)."""
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        if self.kind in ("grid", "choice"):
            return list(self.values)
        raise ValueError(f"{self.key}: a {self.kind} parameter has no finite list of values")

    def representatives(self) -> list[Any]:
        """The values checked at load time: all listed values, or both ends of a range."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        if self.kind == "int":
            return sorted({int(self.low), int(self.high)})
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.kind in ("grid", "choice"):
            return any(_same(value, v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether the parameter exists given the values chosen for earlier parameters."""
        return all(c.holds(chosen, dotted=False) for c in self.conditions)

    def sample(self, rng: random.Random) -> Any:
        """One random value (search.algorithm random)."""
        if self.kind in ("grid", "choice"):
            return copy.deepcopy(rng.choice(self.values))
        if self.kind == "int":
            if self.log:
                return int(round(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))))
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class Rule:
    """``when:`` entry: if every condition holds on a trial's config, set these keys."""

    conditions: tuple[Condition, ...]
    assign: Mapping[str, Any]

    def apply(self, data: dict[str, Any]) -> bool:
        if all(c.holds(data) for c in self.conditions):
            for key, value in self.assign.items():
                set_dotted(data, key, copy.deepcopy(value))
            return True
        return False


@dataclass(frozen=True)
class SearchConfig:
    algorithm: Literal["grid", "random", "tpe"] = "grid"
    seed: int = 0


@dataclass(frozen=True)
class SchedulerConfig:
    """``fifo`` runs every trial to the end; ``asha`` stops poor ones at rungs measured in epochs."""

    name: Literal["fifo", "asha"] = "fifo"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial resources; ``gpu: auto`` = 1 when the cluster has GPUs, else 0. A fraction (0.5,
    0.25) packs several trials on one GPU (Ray places 1/gpu of them on each; they share its
    memory); more than one GPU per trial is a whole number."""

    cpu: float = 1.0
    gpu: Literal["auto"] | float = "auto"


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: ``uri`` null = ``sqlite:///<cwd>/runs/mlflow.db``; ``experiment`` null = sweep name."""

    uri: str | None = None
    experiment: str | None = None


@dataclass(frozen=True, kw_only=True)
class SweepSettings:
    """The spec keys that say how the trials run and are judged, with their types and defaults
    (the module docstring shows them in a file)."""

    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    num_samples: int = 1
    seeds: tuple[int, ...] = (0,)
    metric: str = "val/R1"
    mode: Literal["max", "min"] = "max"
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent_trials: int | None = None
    max_failures: int = 1
    storage_path: str = "runs/ray"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@dataclass(frozen=True, kw_only=True)
class AblationSpec(SweepSettings):
    """A validated ablation spec. Build it with :func:`load_spec`."""

    path: Path
    name: str
    base: Path
    experiment: Mapping[str, Any]
    space: tuple[Param, ...]
    rules: tuple[Rule, ...] = ()
    baseline: Mapping[str, Any] = field(default_factory=dict)
    variant: str | None = None
    smoke: bool = False
    resolved: Mapping[str, Any] = field(default_factory=dict)

    # -------------------------------------------------------------------------------- queries

    @property
    def sweep_name(self) -> str:
        """The name of this sweep's Ray experiment and MLflow parent run."""
        return self.name + (f"-{self.variant}" if self.variant else "") + ("-smoke" if self.smoke else "")

    @property
    def max_epochs(self) -> int:
        return int(get_dotted(self.experiment, "training.epochs", 60))

    @property
    def param_keys(self) -> list[str]:
        return [p.key for p in self.space]

    @property
    def hash(self) -> str:
        """sha256 of the resolved spec (what runs), to tell a resumed sweep it is the same one."""
        blob = json.dumps(self.resolved, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def file_hash(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def configurations(self) -> list[dict[str, Any]]:
        """The parameter sets of a grid or random search (seeds not included), in a fixed order.

        grid: the product of every parameter's values, with inactive conditional parameters dropped
        and duplicates removed. random: ``num_samples`` draws from a generator seeded with
        ``search.seed``, crossed with the values of ``grid`` parameters.
        """
        if self.search.algorithm == "tpe":
            raise ValueError("tpe suggests configurations while it runs; there is no fixed list")
        if self.search.algorithm == "grid":
            return _expand(self.space, lambda p: p.all_values())
        rng = random.Random(self.search.seed)
        out: list[dict[str, Any]] = []
        for _ in range(self.num_samples):
            draw = {p.key: p.sample(rng) for p in self.space if p.kind != "grid"}
            out += _expand(self.space, lambda p: list(p.values) if p.kind == "grid" else [draw[p.key]])
        return _unique(out)

    def trial_dict(self, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """The experiment data of one trial: base + overrides, parameters, ``when`` rules, seed."""
        data = copy.deepcopy(dict(self.experiment))
        for key, value in params.items():
            set_dotted(data, key, copy.deepcopy(value))
        for rule in self.rules:
            rule.apply(data)
        data["seed"] = int(seed)
        return data

    def trial_config(self, params: Mapping[str, Any], seed: int, *, name: str | None = None,
                     output_dir: str | None = None) -> ExperimentConfig:
        """The validated :class:`ExperimentConfig` of one trial."""
        data = self.trial_dict(params, seed)
        if name is not None:
            data["name"] = name
        if output_dir is not None:
            data["output_dir"] = output_dir
        return config_from_dict(data, f"{self.path} (trial {config_key(params)}, seed {seed})")

    def num_trials(self) -> int | None:
        """How many trials the sweep runs (all seeds)."""
        if self.search.algorithm == "tpe":
            return self.num_samples * len(self.seeds)
        return len(self.configurations()) * len(self.seeds)


def config_key(params: Mapping[str, Any]) -> str:
    """``"lora.rank=8,fusion.depth=2"``: a configuration without its seed, in space order."""
    return ",".join(f"{k}={_key_value(v)}" for k, v in params.items())


def _key_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_key_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        text = f"{value:.6g}"  # short for sampled floats; 8.0 stays "8.0", not "8"
        return text if any(c in text for c in ".ein") else text + ".0"
    return str(value)


def _expand(space: Sequence[Param], values_of) -> list[dict[str, Any]]:
    """Product over parameters in order, skipping inactive ones; duplicates dropped, order kept."""
    partial: list[dict[str, Any]] = [{}]
    for p in space:
        nxt: list[dict[str, Any]] = []
        for chosen in partial:
            if p.active(chosen):
                nxt += [{**chosen, p.key: copy.deepcopy(v)} for v in values_of(p)]
            else:
                nxt.append(chosen)
        partial = nxt
    return _unique(partial)


def _unique(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop repeated configurations (the same configuration and seed would be the same trial)."""
    seen: set[str] = set()
    out = []
    for cfg in configs:
        k = json.dumps(cfg, sort_keys=True, default=str)
        if k not in seen:
            seen.add(k)
            out.append(cfg)
    return out


# ------------------------------------------------------------------------------------ parsing

SPEC_KEYS = ("name", "base", "overrides", "space", "when", "search", "scheduler", "num_samples",
             "seeds", "metric", "mode", "resources", "max_concurrent_trials", "max_failures",
             "storage_path", "tracking", "baseline", "smoke", "variants", "variant")
# Keys that `smoke:` and the command line cannot set (a smoke block may swap `base`, e.g. to the
# synthetic experiment, so that CI runs a CUHK-PEDES spec on the tiny model).
_NOT_OVERRIDABLE = ("smoke", "variants", "variant")


class _Where:
    """Builds ConfigErrors about one spec file: ``<file>: <key>: <message>``."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(msg, key=key, source=str(self.path))

    def typed(self, value: Any, tp: Any, key: str) -> Any:
        """``value`` converted to ``tp`` by the config's typed loader; errors name this file."""
        try:
            return coerce(value, tp, key)
        except ConfigError as exc:
            raise exc.within(self.path) from None


def _mapping(where: _Where, key: str, value: Any) -> dict[str, Any]:
    """A mapping section of the raw spec (null = empty)."""
    return {} if value is None else where.typed(value, dict[str, Any], key)


@dataclass(frozen=True, kw_only=True)
class _SpecFile(SweepSettings):
    """The top level of an ablation spec once its variant, smoke block and command line are applied:
    the settings plus what the spec file says about the experiment and its space."""

    name: str | None = None
    base: str | None = None
    overrides: dict[str, Any] | None = None
    space: dict[str, Any] | None = None
    when: list[Any] | None = None
    baseline: dict[str, Any] | None = None


def _parse_conditions(where: _Where, key: str, value: Any) -> tuple[Condition, ...]:
    data = _mapping(where, key, value)
    if not data:
        raise where.fail(key, "expected at least one condition, e.g. {lora.rank: {gt: 0}}")
    out = []
    for k, v in data.items():
        if isinstance(v, Mapping):
            bad = [op for op in v if op not in OPERATORS]
            if bad or not v:
                raise where.fail(f"{key}.{k}", f"unknown operator {bad[0] if bad else None!r} "
                                               f"(operators: {', '.join(OPERATORS)}; compare with a "
                                               f"mapping as {{eq: {{...}}}})")
            for op, target in v.items():
                if op in ("in", "not_in") and not isinstance(target, list):
                    raise where.fail(f"{key}.{k}.{op}", f"expected a list, got {target!r}")
                if op in ("gt", "ge", "lt", "le"):
                    target = where.typed(target, float, f"{key}.{k}.{op}")
                out.append(Condition(str(k), op, target))
        else:
            out.append(Condition(str(k), "eq", v))
    return tuple(out)


def _parse_param(where: _Where, key: str, value: Any) -> Param:
    k = f"space.{key}"
    data = _mapping(where, k, value)
    kinds = [x for x in data if x in PARAM_KINDS]
    extra = [x for x in data if x not in PARAM_KINDS and x not in ("if", "log")]
    if extra:
        raise where.fail(f"{k}.{extra[0]}", f"unknown key (a parameter is one of {', '.join(PARAM_KINDS)}"
                                            f", plus optional 'if' and, for ranges, 'log')")
    if len(kinds) != 1:
        raise where.fail(k, f"give exactly one of {', '.join(PARAM_KINDS)}, got {kinds or 'none'}")
    kind = kinds[0]
    spec = data[kind]
    conditions = _parse_conditions(where, f"{k}.if", data["if"]) if "if" in data else ()
    log = data.get("log", False)
    if not isinstance(log, bool):
        raise where.fail(f"{k}.log", f"expected true/false, got {log!r}")
    if kind in ("grid", "choice"):
        if log:
            raise where.fail(f"{k}.log", f"log applies to ranges, not to {kind}")
        if not isinstance(spec, list) or not spec:
            raise where.fail(f"{k}.{kind}", f"expected a non-empty list of values, got {spec!r}")
        labels = [json.dumps(v, sort_keys=True, default=str) for v in spec]
        if len(set(labels)) != len(labels):
            raise where.fail(f"{k}.{kind}", f"values repeat: {spec!r}")
        return Param(key, kind, values=tuple(spec), conditions=conditions)
    if not isinstance(spec, list) or len(spec) != 2:
        raise where.fail(f"{k}.{kind}", f"expected [low, high], got {spec!r}")
    bound = int if kind == "int" else float
    low, high = (where.typed(x, bound, f"{k}.{kind}[{i}]") for i, x in enumerate(spec))
    if not low < high:
        raise where.fail(f"{k}.{kind}", f"low must be < high, got {spec!r}")
    if kind == "loguniform" and log:
        raise where.fail(f"{k}.log", "loguniform is already logarithmic")
    if kind == "uniform" and log:
        raise where.fail(f"{k}.log", "use loguniform for a logarithmic float range")
    if (kind == "loguniform" or log) and low <= 0:
        raise where.fail(f"{k}.{kind}", f"a logarithmic range needs low > 0, got {spec!r}")
    cast = int if kind == "int" else float
    return Param(key, kind, low=cast(low), high=cast(high), log=log, conditions=conditions)


def _parse_rules(where: _Where, value: Any) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.fail("when", f"expected a list of {{if: ..., set: ...}} rules, got {value!r}")
    out = []
    for i, item in enumerate(value):
        k = f"when[{i}]"
        data = _mapping(where, k, item)
        for x in data:
            if x not in ("if", "set"):
                raise where.fail(f"{k}.{x}", "unknown key (a rule has 'if' and 'set')")
        if "if" not in data or "set" not in data:
            raise where.fail(k, "a rule needs both 'if' and 'set'")
        assign = _mapping(where, f"{k}.set", data["set"])
        if not assign:
            raise where.fail(f"{k}.set", "expected at least one key to set")
        out.append(Rule(_parse_conditions(where, f"{k}.if", data["if"]), assign))
    return tuple(out)


def _apply_spec_overrides(where: _Where, raw: dict[str, Any], over: Mapping[str, Any],
                          what: str) -> dict[str, Any]:
    """Apply ``smoke:`` / CLI / variant overrides: spec keys to the spec, the rest to the experiment.

    A key whose first part is a spec key (``num_samples``, ``seeds``, ``scheduler.grace_period``) sets
    that spec key; ``space``/``overrides`` mappings are merged entry by entry; any other dotted key is
    an experiment override (``training.epochs``).
    """
    raw = copy.deepcopy(raw)
    for key, value in over.items():
        head = key.split(".", 1)[0]
        if head in _NOT_OVERRIDABLE:
            raise where.fail(f"{what}.{key}", f"'{head}' cannot be set from {what}")
        if key in ("space", "overrides"):
            merged = _mapping(where, key, raw.get(key))
            merged.update(_mapping(where, f"{what}.{key}", value))
            raw[key] = merged
        elif head in SPEC_KEYS:
            if "." in key and not isinstance(raw.get(head), (Mapping, type(None))):
                raise where.fail(f"{what}.{key}", f"{head} is not a section")
            set_dotted(raw, key, copy.deepcopy(value))
        else:
            overrides = _mapping(where, "overrides", raw.get("overrides"))
            overrides[key] = copy.deepcopy(value)
            raw["overrides"] = overrides
    return raw


def _apply_variant(where: _Where, raw: dict[str, Any], name: str,
                   variant: Mapping[str, Any]) -> dict[str, Any]:
    """A variant replaces whole top-level spec keys (``overrides`` is merged key by key)."""
    raw = copy.deepcopy(raw)
    for key, value in variant.items():
        if key not in SPEC_KEYS or key in ("variants", "variant"):
            raise where.fail(f"variants.{name}.{key}", "not a spec key a variant can replace")
        if key == "overrides":
            merged = _mapping(where, "overrides", raw.get("overrides"))
            merged.update(_mapping(where, f"variants.{name}.overrides", value))
            raw[key] = merged
        else:
            raw[key] = copy.deepcopy(value)
    return raw


def _absolute_paths(data: dict[str, Any]) -> None:
    """Make the experiment's path keys absolute against the current directory."""
    for key in PATH_KEYS:
        value = get_dotted(data, key, None)
        if isinstance(value, str) and value and value not in PATH_KEYWORDS.get(key, ()):
            set_dotted(data, key, str(Path(value).expanduser().resolve()))


def load_spec(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = (), *,
              smoke: bool = False) -> AblationSpec:
    """Read, resolve and validate an ablation spec.

    ``overrides`` are ``key=value`` strings (or a mapping): spec keys (``num_samples=4``,
    ``search.algorithm=random``, ``variant=tpe``) or experiment keys (``training.epochs=2``).
    ``smoke`` applies the spec's ``smoke:`` block first (the command line still wins).
    """
    path = Path(path)
    where = _Where(path)
    raw = read_mapping(path, "ablation spec")
    for key in raw:
        if key not in SPEC_KEYS:
            raise where.fail(str(key), f"unknown key (known keys: {', '.join(SPEC_KEYS)})")
    cli = parse_overrides(overrides) if not isinstance(overrides, Mapping) else dict(overrides)

    # 1. The variant (from the command line, else the spec's default).
    variants = _mapping(where, "variants", raw.pop("variants", None))
    variant = cli.pop("variant", raw.pop("variant", None))
    if variant is not None:
        if variant not in variants:
            raise where.fail("variant", f"{variant!r} is not one of the spec's variants "
                                        f"({', '.join(variants) or 'none defined'})")
        raw = _apply_variant(where, raw, variant, _mapping(where, f"variants.{variant}",
                                                           variants[variant]))
    elif variants:
        raise where.fail("variant", f"this spec has variants ({', '.join(variants)}): "
                                    f"set a default 'variant:' or pass variant=NAME")
    # 2. smoke, 3. the command line.
    smoke_block = _mapping(where, "smoke", raw.pop("smoke", None))
    if smoke:
        if not smoke_block:
            raise where.fail("smoke", "--smoke was asked for but the spec has no smoke: block")
        raw = _apply_spec_overrides(where, raw, smoke_block, "smoke")
    if cli:
        raw = _apply_spec_overrides(where, raw, cli, "command line")
    resolved = copy.deepcopy(raw)
    top = where.typed(raw, _SpecFile, "")

    name = top.name
    if not name or "/" in name or name != name.strip():
        raise where.fail("name", f"expected a name without '/', got {name!r}")
    if top.base is None:
        raise where.fail("base", "expected the experiment file, relative to the spec "
                                 "(e.g. ../experiments/iclf_cuhk.yaml)")
    base = (path.parent / top.base).resolve()
    if not base.is_file():
        raise where.fail("base", f"no such experiment file {base}")
    try:
        experiment = read_yaml(base)
    except ConfigError as exc:
        raise where.fail("base", str(exc)) from None
    for key, value in (top.overrides or {}).items():
        try:
            set_dotted(experiment, key, copy.deepcopy(value))
        except ConfigError as exc:
            raise where.fail(f"overrides.{key}", exc.message) from None
    _absolute_paths(experiment)
    applied = "base + overrides" + (" + smoke" if smoke else "") + (" + command line" if cli else "")
    _build_experiment(where, f"experiment ({applied})", experiment)

    if not top.space:
        raise where.fail("space", "expected at least one parameter")
    space = tuple(_parse_param(where, str(k), v) for k, v in top.space.items())
    settings = {f.name: getattr(top, f.name) for f in dataclasses.fields(SweepSettings)}
    spec = AblationSpec(
        path=path, name=name, base=base, experiment=experiment, space=space,
        rules=_parse_rules(where, top.when),
        baseline={k: exponent_number(v) for k, v in (top.baseline or {}).items()},
        variant=variant, smoke=smoke, resolved=resolved, **settings)
    _validate(where, spec)
    return spec


def _build_experiment(where: _Where, key: str, data: Mapping[str, Any]) -> ExperimentConfig:
    try:
        return config_from_dict(data, "experiment")
    except ConfigError as exc:
        raise where.fail(key, exc.detail) from None


# --------------------------------------------------------------------------------- validation


def _validate(where: _Where, spec: AblationSpec) -> None:
    """Ranges and cross-key rules (the typed loader has checked every type)."""
    sc = spec.scheduler
    if sc.grace_period < 1:
        raise where.fail("scheduler.grace_period", f"expected an integer >= 1, got {sc.grace_period!r}")
    if sc.reduction_factor <= 1:
        raise where.fail("scheduler.reduction_factor", f"expected a number > 1, got "
                                                       f"{sc.reduction_factor!r}")
    if sc.name == "fifo" and (sc.grace_period != 1 or sc.reduction_factor != 2.0):
        raise where.fail("scheduler", "grace_period and reduction_factor apply to asha only")
    epochs_key = "training.epochs"
    if any(p.key == epochs_key for p in spec.space) and sc.name == "asha":
        raise where.fail("space.training.epochs", "asha measures rungs in epochs; the number of "
                                                  "epochs cannot be a searched parameter with asha")
    if sc.name == "asha" and sc.grace_period > spec.max_epochs:
        raise where.fail("scheduler.grace_period", f"{sc.grace_period} is more than the "
                                                   f"{spec.max_epochs} training epochs")
    if spec.num_samples < 1:
        raise where.fail("num_samples", f"expected an integer >= 1, got {spec.num_samples!r}")
    if spec.search.algorithm == "grid" and spec.num_samples != 1:
        raise where.fail("num_samples", "with search.algorithm grid the grid defines the trials; "
                                        "use seeds: for repeats")
    seeds = spec.seeds
    if not seeds:
        raise where.fail("seeds", f"expected a non-empty list of integers, got {list(seeds)!r}")
    if len(set(seeds)) != len(seeds):
        raise where.fail("seeds", f"seeds repeat: {list(seeds)}")
    if spec.search.algorithm == "tpe" and len(seeds) > 1 and sc.name != "fifo":
        raise where.fail("seeds", "tpe with several seeds repeats each suggestion once per seed "
                                  "(Ray's Repeater), which cannot run under an early-stopping "
                                  "scheduler: use one seed with asha, or scheduler fifo")
    if spec.metric not in VAL_METRICS:
        hint = " (test metrics are never shown to the search)" if spec.metric.startswith(
            "test/") else ""
        raise where.fail("metric", f"{spec.metric!r} is not a validation metric{hint}; "
                                   f"one of {', '.join(VAL_METRICS)}")
    r = spec.resources
    if r.cpu <= 0:
        raise where.fail("resources.cpu", f"expected a number > 0, got {r.cpu!r}")
    if r.gpu != "auto" and r.gpu < 0:
        raise where.fail("resources.gpu", f"expected 'auto' or a number >= 0, got {r.gpu!r}")
    if r.gpu != "auto" and r.gpu > 1 and r.gpu != int(r.gpu):
        raise where.fail("resources.gpu", f"{r.gpu!r}: a trial takes a fraction of one GPU (0.5, "
                                          f"0.25: trials share it) or whole GPUs (1, 2), not both")
    m = spec.max_concurrent_trials
    if m is not None and m < 1:
        raise where.fail("max_concurrent_trials", f"expected an integer >= 1 or null, got {m!r}")
    if spec.max_failures < 0:
        raise where.fail("max_failures", f"expected an integer >= 0, got {spec.max_failures!r}")
    if not spec.storage_path:
        raise where.fail("storage_path", f"expected a path, got {spec.storage_path!r}")
    t = spec.tracking
    if t.uri is not None:
        from iclf.tracking.store import has_password, redact

        if has_password(t.uri):
            raise where.fail("tracking.uri", f"{redact(t.uri)} carries a password, which would be "
                             f"saved with the sweep (its spec artifact, sweep.json): remove it and "
                             f"set PGPASSWORD or ~/.pgpass (a database) or MLFLOW_TRACKING_PASSWORD "
                             f"(an MLflow server)")
    if t.experiment is not None and not t.experiment:
        raise where.fail("tracking.experiment", f"expected a name or null, got {t.experiment!r}")
    _validate_space(where, spec)


#: TPE draws while it runs; at load time this many seeded random draws check its space's rules.
TPE_DRAWS_CHECKED = 200


def _validate_space(where: _Where, spec: AblationSpec) -> None:
    """Every parameter is a config key, every value builds a valid experiment config."""
    algo = spec.search.algorithm
    for i, rule in enumerate(spec.rules):
        for c in rule.conditions:
            if not schema_has(c.key):
                raise where.fail(f"when[{i}].if.{c.key}", "not a key of the experiment config")
        for key, value in rule.assign.items():
            if not schema_has(key):
                raise where.fail(f"when[{i}].set.{key}", "not a key of the experiment config")
            data = copy.deepcopy(dict(spec.experiment))
            set_dotted(data, key, copy.deepcopy(value))
            try:
                config_from_dict(data, "experiment")
            except ConfigError as exc:
                if exc.key == key or (exc.key or "").startswith(f"{key}["):
                    raise where.fail(f"when[{i}].set.{key}", exc.message) from None
    earlier: dict[str, Param] = {}
    for p in spec.space:
        k = f"space.{p.key}"
        if p.key in ("seed", "name", "output_dir"):
            raise where.fail(k, "set by the sweep for each trial; use seeds: for seeds")
        if not schema_has(p.key):
            raise where.fail(k, "not a key of the experiment config")
        if algo == "grid" and not p.finite:
            raise where.fail(k, f"{p.kind} needs search.algorithm random or tpe; a grid needs "
                                f"finite values (grid, choice or int)")
        if algo == "tpe" and p.kind == "grid":
            raise where.fail(k, "grid values are for search.algorithm grid or random; "
                                "use choice with tpe")
        for c in p.conditions:
            if c.key not in earlier:
                raise where.fail(f"{k}.if.{c.key}", "a condition may only name parameters listed "
                                                    "before this one in space")
        earlier[p.key] = p
        for value in p.representatives():
            params = _witness(where, spec, p, value)
            _check_trial(where, spec, k, params, f"{p.key}={value!r}")
    if algo in ("grid", "random"):
        for params in spec.configurations():
            _check_trial(where, spec, "space", params, config_key(params))
    else:  # tpe: no list of configurations; draws that cross the conditions and the rules
        rng = random.Random(spec.search.seed)
        for _ in range(TPE_DRAWS_CHECKED):
            params = _expand(spec.space, lambda p: [p.sample(rng)])[0]
            _check_kept(where, spec, params, config_key(params),
                        spec.trial_dict(params, spec.seeds[0]))
    if spec.baseline:
        keys = spec.param_keys
        for key, value in spec.baseline.items():
            if key not in keys:
                raise where.fail(f"baseline.{key}", f"not a parameter of the space ({', '.join(keys)})")
            p = spec.space[keys.index(key)]
            if not p.contains(value):
                raise where.fail(f"baseline.{key}", f"{value!r} is not a value of the space")
        params = {p.key: spec.baseline[p.key] for p in spec.space if p.key in spec.baseline}
        _check_trial(where, spec, "baseline", params, config_key(params))


def schema_has(key: str) -> bool:
    """Whether ``key`` names a field (or a section) of :class:`ExperimentConfig`."""
    tp: Any = ExperimentConfig
    for part in key.split("."):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
        if not dataclasses.is_dataclass(tp):
            return False
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return True


def _witness(where: _Where, spec: AblationSpec, target: Param, value: Any) -> dict[str, Any]:
    """Parameter values that make ``target`` active with ``value``: earlier parameters at the first of
    their representative values that satisfies target's conditions."""
    params: dict[str, Any] = {}
    by_key = {p.key: p for p in spec.space}
    for c in target.conditions:
        p = by_key[c.key]
        for candidate in p.representatives() if not p.finite else p.all_values():
            if c.holds({c.key: candidate}, dotted=False):
                params[c.key] = candidate
                break
        else:
            raise where.fail(f"space.{target.key}.if.{c.key}",
                             f"no value of {c.key} satisfies {c.describe()}")
    params[target.key] = value
    return params


def _check_trial(where: _Where, spec: AblationSpec, key: str, params: Mapping[str, Any],
                 what: str) -> None:
    data = spec.trial_dict(params, spec.seeds[0])
    try:
        config_from_dict(data, "experiment")
    except ConfigError as exc:
        raise where.fail(key, f"with {what}: {exc.detail}") from None
    _check_kept(where, spec, params, what, data)


def _check_kept(where: _Where, spec: AblationSpec, params: Mapping[str, Any], what: str,
                data: Mapping[str, Any]) -> None:
    """Every parameter of a trial keeps its value after the ``when`` rules: one a rule sets again
    would be logged and compared with a value the trial never trained with."""
    for key, value in params.items():
        used = get_dotted(data, key, None)
        if not _same(used, value):
            raise where.fail(f"space.{key}", f"with {what}: a when: rule sets {key} to {used!r}, so "
                                             f"the drawn {value!r} would change nothing; give the "
                                             f"parameter an if: that leaves it out where the rule "
                                             f"holds")


def flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"param.<dotted>": value}`` with mappings as canonical JSON (for MLflow and DataFrames)."""
    return {f"{PARAM_PREFIX}{k}": (json.dumps(v, sort_keys=True) if isinstance(v, (Mapping, list)) else v)
            for k, v in params.items()}


__all__ = ["AblationSpec", "SweepSettings", "Condition", "Param", "Rule", "SearchConfig", "SchedulerConfig",
           "ResourcesConfig", "TrackingConfig", "load_spec", "config_key", "get_dotted",
           "flat_params", "schema_has", "PATH_KEYS"]
