"""Ablation specs: every shipped spec validates (plain, smoke, every variant) without running anything;
bad specs raise errors naming the file and the key; grids, conditions, rules and seeds resolve as
documented."""

import json
import random
import sys
from pathlib import Path

import pytest
import yaml

from iclf.config import ConfigError
from iclf.sweep.spec import config_key, flat_params, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "ablations").glob("*.yaml"))


def _variants(path: Path) -> list[str | None]:
    raw = yaml.safe_load(path.read_text())
    return list(raw.get("variants") or {}) or [None]


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_validates(path):
    for variant in _variants(path):
        over = [f"variant={variant}"] if variant else []
        for smoke in (False, True):
            spec = load_spec(path, over, smoke=smoke)
            assert spec.metric.startswith("val/")
            assert spec.base.is_file()
            assert spec.num_trials() >= 1
            if spec.search.algorithm != "tpe":
                for params in spec.configurations():
                    cfg = spec.trial_config(params, spec.seeds[0])
                    assert cfg.seed == spec.seeds[0]


def test_shipped_specs_are_the_documented_ones():
    names = {p.stem for p in SPECS}
    assert {"lora_rank", "loss_weights", "attention_depth", "joint", "demo"} <= names
    for name in ("lora_rank", "loss_weights", "attention_depth", "joint"):
        spec = load_spec(ROOT / "ablations" / f"{name}.yaml")
        assert spec.base.name == "iclf_cuhk.yaml"
    lora = load_spec(ROOT / "ablations/lora_rank.yaml")
    assert [c["lora.rank"] for c in lora.configurations()] == [0, 4, 8, 16, 32, 64]
    assert lora.seeds == (0, 1, 2) and lora.num_trials() == 18
    assert lora.trial_config({"lora.rank": 0}, 1).lora.rank == 0
    loo = load_spec(ROOT / "ablations/loss_weights.yaml")
    assert loo.search.algorithm == "grid" and len(loo.configurations()) == 5
    tpe = load_spec(ROOT / "ablations/loss_weights.yaml", ["variant=tpe"])
    assert tpe.search.algorithm == "tpe" and tpe.sweep_name == "loss_weights-tpe"
    assert tpe.param_keys == [f"losses.weights.{n}" for n in ("itc", "mlm", "itm", "id")]
    depth = load_spec(ROOT / "ablations/attention_depth.yaml")
    configs = depth.configurations()
    assert len(configs) == 1 + 6 * 3 and configs[0] == {"fusion.depth": 0}
    cfg0 = depth.trial_config(configs[0], 0)
    assert cfg0.fusion.depth == 0 and cfg0.losses.weights.mlm == 0 and cfg0.losses.weights.itm == 0
    cfg1 = depth.trial_config(configs[1], 0)
    assert cfg1.losses.weights.mlm > 0 and cfg1.fusion.style == "irra"
    joint = load_spec(ROOT / "ablations/joint.yaml")
    assert (joint.search.algorithm, joint.scheduler.name) == ("tpe", "asha")
    assert "optim.lr" in joint.param_keys


def test_demo_runs_on_synthetic_data_on_cpu():
    demo = load_spec(ROOT / "ablations/demo.yaml")
    assert demo.base.name == "synthetic.yaml"
    assert demo.resources.gpu == 0 and demo.seeds == (0, 1, 2)
    assert set(demo.param_keys) == {"losses.weights.sdm", "fusion.depth"}
    cfg = demo.trial_config(demo.configurations()[0], 0)
    assert cfg.data.synthetic is not None and cfg.model.backbone == "tiny"
    # evaluation splits where one query moves R1 by at most 0.5 points
    synth = cfg.data.synthetic
    assert synth.eval_ids * synth.images_per_id * 2 >= 200  # CUHK-PEDES: 2 captions per image
    weights = {tuple(c.items()): demo.trial_config(c, 0).losses.weights
               for c in demo.configurations()}
    for config, w in weights.items():  # SDM replaces ITC; no fusion module, no MLM/ITM
        params = dict(config)
        assert (w.itc, w.sdm) == ((0.0, 1.0) if params["losses.weights.sdm"] else (1.0, 0.0))
        assert (w.mlm == 0 and w.itm == 0) == (params["fusion.depth"] == 0)


# ---------------------------------------------------------------------------- writing specs


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    experiments = tmp_path / "experiments"
    experiments.mkdir(exist_ok=True)
    (experiments / "base.yaml").write_text(
        "name: base\n"
        "lora: {rank: 8, alpha: 16.0}\n"
        "fusion: {style: interlaced, depth: 2}\n"
        "losses: {weights: {itc: 1.0, mlm: 1.0, itm: 1.0, id: 1.0}}\n"
        "training: {epochs: 6}\n"
        "schedule: {warmup_epochs: 1}\n")
    path = tmp_path / "ablations" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


GOOD = """\
name: t
base: ../experiments/base.yaml
space:
  lora.rank: {grid: [0, 8]}
  lora.alpha: {grid: [8.0, 32.0], if: {lora.rank: {gt: 0}}}
  fusion.depth: {grid: [0, 2]}
when:
  - if: {fusion.depth: 0}
    set: {losses.weights.mlm: 0.0, losses.weights.itm: 0.0}
seeds: [3, 4]
baseline: {lora.rank: 0, fusion.depth: 2}
smoke: {training.epochs: 2, seeds: [3], space: {fusion.depth: {grid: [2]}}}
"""


def test_grid_with_conditions_rules_and_seeds(tmp_path):
    spec = load_spec(write_spec(tmp_path, GOOD))
    keys = [config_key(c) for c in spec.configurations()]
    assert keys == ["lora.rank=0,fusion.depth=0", "lora.rank=0,fusion.depth=2",
                    "lora.rank=8,lora.alpha=8.0,fusion.depth=0",
                    "lora.rank=8,lora.alpha=8.0,fusion.depth=2",
                    "lora.rank=8,lora.alpha=32.0,fusion.depth=0",
                    "lora.rank=8,lora.alpha=32.0,fusion.depth=2"]
    assert spec.num_trials() == 12
    cfg = spec.trial_config({"lora.rank": 8, "lora.alpha": 32.0, "fusion.depth": 0}, 4,
                            name="trial", output_dir="/abs/out")
    assert (cfg.seed, cfg.name, cfg.output_dir) == (4, "trial", "/abs/out")
    assert cfg.lora.alpha == 32.0 and cfg.losses.weights.mlm == 0 and cfg.losses.weights.itm == 0
    assert spec.trial_config({"lora.rank": 0, "fusion.depth": 2}, 3).losses.weights.mlm == 1.0
    assert spec.hash == load_spec(spec.path).hash


def test_smoke_and_command_line_overrides(tmp_path):
    path = write_spec(tmp_path, GOOD)
    smoke = load_spec(path, smoke=True)
    assert smoke.seeds == (3,) and smoke.max_epochs == 2 and smoke.sweep_name == "t-smoke"
    assert len(smoke.configurations()) == 3
    cli = load_spec(path, ["training.epochs=3", "seeds=[7]", "max_failures=0", "optim.lr=1e-3"],
                    smoke=True)
    assert cli.max_epochs == 3 and cli.seeds == (7,) and cli.max_failures == 0
    assert cli.trial_config(cli.configurations()[0], 7).optim.lr == 1e-3
    assert cli.hash != smoke.hash


def test_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(tmp_path, GOOD), ["data.root=some/data", "output_dir=out"])
    assert spec.experiment["data"]["root"] == str(tmp_path / "some/data")
    assert spec.experiment["output_dir"] == str(tmp_path / "out")


# YAML reads a bare off/on as false/true; quoted, they stay strings. Neither is a path.
@pytest.mark.parametrize("value,raw,setting", [
    ("cache", "ABS", "ABS"), ("'off'", "off", "off"), ("auto", "auto", "auto"),
    ("off", False, "off"), ("on", True, "auto"), (None, None, "auto")])
def test_image_cache_is_absolute_only_when_a_directory(tmp_path, monkeypatch, value, raw, setting):
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "cache")
    spec = load_spec(write_spec(tmp_path, GOOD), [f"data.image_cache={value}"] if value else [])
    assert spec.experiment.get("data", {}).get("image_cache") == (absolute if raw == "ABS" else raw)
    cfg = spec.trial_config({"lora.rank": 0, "fusion.depth": 2}, 3)
    assert cfg.data.image_cache == (absolute if setting == "ABS" else setting)


def test_random_search_is_seeded(tmp_path):
    text = GOOD.replace("seeds: [3, 4]", "seeds: [3, 4]\nsearch: {algorithm: random, seed: 5}\n"
                                         "num_samples: 4") \
        .replace("lora.alpha: {grid: [8.0, 32.0]", "lora.alpha: {loguniform: [4.0, 64.0]")
    spec = load_spec(write_spec(tmp_path, text))
    a, b = spec.configurations(), load_spec(spec.path).configurations()
    assert a == b
    # lora.rank and fusion.depth are grid parameters: crossed with each of the 4 draws of
    # lora.alpha (active for rank 8 only); rank 0 repeats across draws and runs once.
    assert len(a) == 2 + 4 * 2 and {c["fusion.depth"] for c in a} == {0, 2}
    for c in a:
        assert ("lora.alpha" in c) == (c["lora.rank"] > 0)
        if "lora.alpha" in c:
            assert 4.0 <= c["lora.alpha"] <= 64.0
    other = load_spec(spec.path, ["search.seed=6"]).configurations()
    assert other != a


def test_tpe_define_by_run_respects_conditions(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("ray")
    from iclf.sweep.tune import define_by_run, trial_params, trial_seed
    text = """\
name: t
base: ../experiments/base.yaml
space:
  lora.rank: {choice: [0, 8]}
  lora.alpha: {choice: [8.0, 32.0], if: {lora.rank: {gt: 0}}}
  losses.weights: {choice: [{itc: 1.0, mlm: 1.0, itm: 1.0, id: 1.0}, {itc: 1.0, id: 1.0}]}
  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
  fusion.depth: {int: [1, 3]}
search: {algorithm: tpe, seed: 0}
num_samples: 8
seeds: [0, 1]
"""
    spec = load_spec(write_spec(tmp_path, text))
    assert spec.num_trials() == 16
    define = define_by_run(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_ranks = set()
    for _ in range(12):
        trial = study.ask()
        assert define(trial) is None  # several seeds: the seed comes from Ray's Repeater
        raw = {k.removeprefix("params/"): v for k, v in trial.params.items()}
        params = trial_params(spec, {"params": raw})
        seen_ranks.add(params["lora.rank"])
        assert ("lora.alpha" in params) == (params["lora.rank"] > 0)
        assert isinstance(params["losses.weights"], dict)
        assert 1e-5 <= params["optim.lr"] <= 1e-3 and params["fusion.depth"] in (1, 2, 3)
        spec.trial_config(params, 0)
        study.tell(trial, 0.0)
    assert seen_ranks == {0, 8}
    assert trial_seed(spec, {"__trial_index__": 1}) == 1
    single = load_spec(spec.path, ["seeds=[9]"])
    assert define_by_run(single)(optuna.create_study().ask()) == {"seed": 9}
    assert trial_seed(single, {"seed": 9}) == 9


def test_variants(tmp_path):
    text = GOOD.replace("seeds: [3, 4]", "seeds: [3, 4]\nvariant: a\nvariants:\n  a: {}\n"
                                         "  b: {seeds: [1], overrides: {training.epochs: 3}}")
    path = write_spec(tmp_path, text)
    assert load_spec(path).sweep_name == "t-a"
    b = load_spec(path, ["variant=b"])
    assert b.sweep_name == "t-b" and b.seeds == (1,) and b.max_epochs == 3
    with pytest.raises(ConfigError, match=r"spec.yaml: variant: 'c' is not one of"):
        load_spec(path, ["variant=c"])


def test_flat_params():
    assert flat_params({"lora.rank": 8, "losses.weights": {"b": 1, "a": 2}}) == {
        "param.lora.rank": 8, "param.losses.weights": json.dumps({"a": 2, "b": 1})}


# ------------------------------------------------------------------------- documented errors

BAD = [
    # (replace in GOOD, with, expected message)
    ("name: t", "name: t\nsurprise: 1", r"spec.yaml: surprise: unknown key"),
    ("lora.rank: {grid: [0, 8]}", "lora.rnk: {grid: [0, 8]}",
     r"spec.yaml: space.lora.rnk: not a key of the experiment config"),
    ("lora.rank: {grid: [0, 8]}", "lora.rank: {grid: [0, -1]}",
     r"spec.yaml: space.lora.rank: with lora.rank=-1: lora.rank: must be >= 0"),
    ("lora.rank: {grid: [0, 8]}", "lora.rank: {grid: [0, eight]}",
     r"spec.yaml: space.lora.rank: with lora.rank='eight': lora.rank: expected an integer"),
    ("lora.rank: {grid: [0, 8]}", "lora.rank: {range: [0, 8]}",
     r"space.lora.rank.range: unknown key"),
    ("lora.rank: {grid: [0, 8]}", "lora.rank: {grid: [0, 8], choice: [1]}",
     r"space.lora.rank: give exactly one of"),
    ("fusion.depth: {grid: [0, 2]}", "fusion.depth: {loguniform: [0.1, 2.0]}",
     r"space.fusion.depth: loguniform needs search.algorithm random or tpe"),
    ("when:\n  - if: {fusion.depth: 0}\n    set: {losses.weights.mlm: 0.0, losses.weights.itm: 0.0}\n",
     "", r"space.fusion.depth: with fusion.depth=0: losses.weights.mlm: the MLM loss needs the "
         r"fusion module"),
    ("if: {lora.rank: {gt: 0}}", "if: {fusion.depth: {gt: 0}}",
     r"space.lora.alpha.if.fusion.depth: a condition may only name parameters listed before"),
    ("if: {lora.rank: {gt: 0}}", "if: {lora.rank: {bigger: 0}}",
     r"space.lora.alpha.if.lora.rank: unknown operator 'bigger'"),
    ("if: {lora.rank: {gt: 0}}", "if: {lora.rank: {gt: zero}}",
     r"space.lora.alpha.if.lora.rank.gt: expected a number"),
    ("set: {losses.weights.mlm: 0.0", "set: {losses.weights.mlmm: 0.0",
     r"when\[0\].set.losses.weights.mlmm: not a key of the experiment config"),
    ("seeds: [3, 4]", "seeds: [3, 3]", r"spec.yaml: seeds: seeds repeat"),
    ("seeds: [3, 4]", "seeds: []", r"spec.yaml: seeds: expected a non-empty list"),
    ("seeds: [3, 4]", "seeds: [3]\nmetric: test/R1",
     r"spec.yaml: metric: 'test/R1' is not a validation metric \(test metrics are never shown"),
    ("seeds: [3, 4]", "seeds: [3]\nnum_samples: 4", r"spec.yaml: num_samples: with search.algorithm "
                                                    r"grid the grid defines the trials"),
    ("seeds: [3, 4]", "seeds: [3]\nsearch: {algorithm: tpe}\nscheduler: {name: asha}",
     r"spec.yaml: space.lora.rank: grid values are for search.algorithm grid or random"),
    ("seeds: [3, 4]", "seeds: [3]\nscheduler: {name: asha, grace_period: 9}",
     r"spec.yaml: scheduler.grace_period: 9 is more than the 6 training epochs"),
    ("seeds: [3, 4]", "seeds: [3]\nscheduler: {name: hyperband}",
     r"spec.yaml: scheduler.name: 'hyperband' is not one of 'fifo', 'asha'"),
    ("seeds: [3, 4]", "seeds: [3]\nscheduler: {name: asha, reduction_factor: 1}",
     r"scheduler.reduction_factor: expected a number > 1"),
    ("seeds: [3, 4]", "seeds: [3]\nscheduler: {name: fifo, grace_period: 3}",
     r"spec.yaml: scheduler: grace_period and reduction_factor apply to asha only"),
    ("seeds: [3, 4]", "seeds: [3]\nresources: {gpu: lots}",
     r"spec.yaml: resources.gpu: expected 'auto' or a number"),
    ("seeds: [3, 4]", "seeds: [3]\nresources: {tpu: 1}", r"spec.yaml: resources.tpu: unknown key"),
    ("seeds: [3, 4]", "seeds: [3]\nresources: {gpu: 1.5}",
     r"spec.yaml: resources.gpu: 1.5: a trial takes a fraction of one GPU \(0.5, 0.25"),
    ("seeds: [3, 4]", "seeds: [3]\nmax_concurrent_trials: 0", r"max_concurrent_trials: expected an "
                                                              r"integer >= 1"),
    ("baseline: {lora.rank: 0, fusion.depth: 2}", "baseline: {lora.rank: 4}",
     r"spec.yaml: baseline.lora.rank: 4 is not a value of the space"),
    ("baseline: {lora.rank: 0, fusion.depth: 2}", "baseline: {optim.lr: 4}",
     r"spec.yaml: baseline.optim.lr: not a parameter of the space"),
    ("base: ../experiments/base.yaml", "base: ../experiments/missing.yaml",
     r"spec.yaml: base: no such experiment file"),
    ("base: ../experiments/base.yaml", "base: ../experiments/base.yaml\noverrides: {optim.lr: -1}",
     r"spec.yaml: experiment \(base \+ overrides\): optim.lr: must be > 0"),
    ("lora.rank: {grid: [0, 8]}", "seed: {grid: [0, 8]}", r"space.seed: set by the sweep"),
]


@pytest.mark.parametrize("old,new,message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_spec_names_file_and_key(tmp_path, old, new, message):
    assert old in GOOD
    path = write_spec(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def test_tpe_with_seeds_needs_fifo(tmp_path):
    text = GOOD.replace("grid: [0, 8]", "choice: [0, 8]").replace("grid: [8.0, 32.0]",
                                                                    "choice: [8.0, 32.0]") \
        .replace("grid: [0, 2]", "choice: [0, 2]") + "search: {algorithm: tpe}\n" \
        "scheduler: {name: asha}\n"
    with pytest.raises(ConfigError, match=r"spec.yaml: seeds: tpe with several seeds .* use one seed "
                                          r"with asha, or scheduler fifo"):
        load_spec(write_spec(tmp_path, text))
    assert load_spec(write_spec(tmp_path, text.replace("seeds: [3, 4]", "seeds: [3]"))).num_trials() \
        == 1


def test_smoke_errors(tmp_path):
    path = write_spec(tmp_path, GOOD.replace("smoke: ", "unused: ").replace("unused: ", "#"))
    with pytest.raises(ConfigError, match=r"spec.yaml: smoke: --smoke was asked for but the spec has "
                                          r"no smoke: block"):
        load_spec(path, smoke=True)
    with pytest.raises(ConfigError, match=r"spec.yaml: command line.variants.x: 'variants' cannot be set"):
        load_spec(write_spec(tmp_path, GOOD), ["variants.x=1"])
    with pytest.raises(ConfigError, match=r"no such ablation spec"):
        load_spec(tmp_path / "nope.yaml")


def test_spec_module_needs_no_ray():
    code = "import sys, iclf.sweep.spec; assert 'ray' not in sys.modules and 'mlflow' not in sys.modules"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_random_helper_unused():
    # Param.sample draws from the given generator only (no global state).
    spec_rng = random.Random(0)
    state = random.getstate()
    from iclf.sweep.spec import Param

    Param("optim.lr", "loguniform", low=1e-5, high=1e-3).sample(spec_rng)
    assert random.getstate() == state


def test_exponent_numbers_pyyaml_reads_as_strings_are_floats(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-6 as the string '1e-6'. A range, an ordering condition, an equality
    condition and a baseline value written that way are numbers; grid and choice values stay as
    given (a string '1e-4' there is compared as the number it spells)."""
    assert yaml.safe_load("x: 1e-6")["x"] == "1e-6"  # the premise
    text = """\
name: t
base: ../experiments/base.yaml
overrides: {optim.lr: 1e-4}
space:
  optim.weight_decay: {loguniform: [1e-6, 1e-3]}
  optim.eps: {uniform: [1E-8, 1e-6]}
search: {algorithm: random, seed: 0}
num_samples: 3
"""
    spec = load_spec(write_spec(tmp_path, text))
    decay, eps = spec.space
    assert (decay.low, decay.high) == (1e-6, 1e-3) and type(decay.low) is float
    assert (eps.low, eps.high) == (1e-8, 1e-6) and type(eps.low) is float
    for params in spec.configurations():
        assert 1e-6 <= params["optim.weight_decay"] <= 1e-3
        assert spec.trial_config(params, 0).optim.lr == 1e-4

    conditional = """\
name: c
base: ../experiments/base.yaml
overrides: {optim.lr: 1e-4}
space:
  optim.weight_decay: {grid: ['1e-5', 1e-4]}
  lora.alpha: {grid: [8.0, 32.0], if: {optim.weight_decay: {gt: 5e-5}}}
when:
  - if: {optim.lr: 1e-4}
    set: {training.epochs: 2}
  - if: {optim.lr: {lt: 5e-4}, optim.weight_decay: {in: [1e-4]}}
    set: {schedule.warmup_epochs: 0}
baseline: {optim.weight_decay: 1e-4, lora.alpha: 32.0}
"""
    spec = load_spec(write_spec(tmp_path, conditional, "c.yaml"))
    configs = spec.configurations()
    assert [c["optim.weight_decay"] for c in configs] == ["1e-5", "1e-4", "1e-4"]
    assert [c.get("lora.alpha") for c in configs] == [None, 8.0, 32.0]
    small, large = spec.trial_config(configs[0], 0), spec.trial_config(configs[1], 0)
    assert small.optim.weight_decay == 1e-5 and large.optim.weight_decay == 1e-4
    assert small.training.epochs == 2 and large.training.epochs == 2  # lr 1e-4 == 1.0e-4
    assert small.schedule.warmup_epochs == 1 and large.schedule.warmup_epochs == 0
    assert spec.baseline == {"optim.weight_decay": 1e-4, "lora.alpha": 32.0}


@pytest.mark.parametrize("search", ["grid", "tpe"])
def test_a_drawn_parameter_a_when_rule_overwrites_is_an_error(tmp_path, search):
    """A parameter a ``when`` rule sets again would be logged with a value the trial never used:
    the MLM weight drawn at fusion depth 0, where the rule turns MLM off. Conditional on the depth,
    it is drawn only where it counts, and the spec loads."""
    kind = "grid: [0.5, 1.0]" if search == "grid" else "uniform: [0.5, 1.0]"
    depth = "grid: [0, 2]" if search == "grid" else "choice: [0, 2]"
    text = (f"name: ow\nbase: {ROOT}/experiments/synthetic.yaml\n"
            f"space:\n  fusion.depth: {{{depth}}}\n  losses.weights.mlm: {{{kind}}}\n"
            "when:\n  - if: {fusion.depth: 0}\n    set: {losses.weights.mlm: 0.0, "
            "losses.weights.itm: 0.0}\n"
            f"search: {{algorithm: {search}}}\n" + ("num_samples: 8\n" if search == "tpe" else "")
            + "seeds: [0]\n")
    with pytest.raises(ConfigError, match=r"spec.yaml: space.losses.weights.mlm: with "
                                          r"fusion.depth=0,losses.weights.mlm=[0-9.]+: a when: rule "
                                          r"sets losses.weights.mlm to 0.0"):
        load_spec(write_spec(tmp_path, text))
    fixed = text.replace(f"{{{kind}}}", f"{{{kind}, if: {{fusion.depth: {{gt: 0}}}}}}")
    assert load_spec(write_spec(tmp_path, fixed)).space[1].conditions
