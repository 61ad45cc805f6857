"""The experiment schema: errors name the key and the file; every shipped YAML validates."""

from pathlib import Path

import pytest
import yaml

from iclf.config import (ConfigError, config_from_dict, load_config, parse_overrides, save_config,
                         to_dict)

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))


def write(tmp_path, data, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_there_are_shipped_experiments():
    names = {p.name for p in EXPERIMENTS}
    for preset in ("irra", "iclf_release", "iclf"):
        for ds in ("cuhk", "icfg", "rstp"):
            assert f"{preset}_{ds}.yaml" in names
    assert "synthetic.yaml" in names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_experiment_validates(path):
    cfg = load_config(path)
    assert cfg.enabled_losses


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {"optim": {"lr": 1e-4, "learning_rate": 3}, "losses": {"weights": {"itc": 1}}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and "optim.learning_rate: unknown key" in str(exc.value)


def test_wrong_type(tmp_path):
    path = write(tmp_path, {"losses": {"weights": {"itc": 1}}, "data": {"batch_size": "sixty-four"}})
    with pytest.raises(ConfigError, match=r"data.batch_size: expected an integer, got 'sixty-four'"):
        load_config(path)


def test_out_of_range(tmp_path):
    path = write(tmp_path, {"losses": {"weights": {"itc": 1}}, "lora": {"rank": -4}})
    with pytest.raises(ConfigError, match=r"lora.rank: must be >= 0"):
        load_config(path)


def test_literal_choices_are_checked(tmp_path):
    path = write(tmp_path, {"losses": {"weights": {"itc": 1}}, "fusion": {"style": "xformer"}})
    with pytest.raises(ConfigError, match=r"fusion.style: 'xformer' is not one of"):
        load_config(path)


def test_mlm_with_fusion_depth_zero_is_an_error(tmp_path):
    path = write(tmp_path, {"losses": {"weights": {"itc": 1, "mlm": 1}}, "fusion": {"depth": 0}})
    with pytest.raises(ConfigError, match=r"losses.weights.mlm: the MLM loss needs the fusion module"):
        load_config(path)
    ok = load_config(path, ["losses.weights.mlm=0"])
    assert ok.fusion.depth == 0 and ok.enabled_losses == ["itc"]


def test_overrides_are_yaml_values_and_checked(tmp_path):
    path = write(tmp_path, {"losses": {"weights": {"itc": 1}}})
    cfg = load_config(path, ["optim.lr=3e-4", "lora.targets.vision=[q,v]", "lora=null"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.lora is None
    with pytest.raises(ConfigError, match="with overrides.*no: unknown key"):
        load_config(path, ["no.such=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["lora.rank"])


def test_base_files_are_merged(tmp_path):
    write(tmp_path, {"losses": {"weights": {"itc": 1, "id": 1}}, "optim": {"lr": 1e-5}}, "base.yaml")
    path = write(tmp_path, {"base": "base.yaml", "optim": {"eps": 1e-8}})
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-5 and cfg.optim.eps == 1e-8 and cfg.enabled_losses == ["itc", "id"]


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "experiments" / "iclf_cuhk.yaml", ["seed=7"])
    out = save_config(cfg, tmp_path / "configs.yaml")
    again = load_config(out)
    assert to_dict(again) == to_dict(cfg)


def test_config_from_dict_reports_source():
    with pytest.raises(ConfigError, match=r"^my.yaml: name: must be"):
        config_from_dict({"name": "", "losses": {"weights": {"itc": 1}}}, "my.yaml")


@pytest.mark.parametrize("chain", [["a.yaml"], ["a.yaml", "b.yaml"], ["a.yaml", "b.yaml", "c.yaml"]],
                         ids=["self", "two", "three"])
def test_base_chain_that_loops_is_one_config_error(tmp_path, chain):
    # a.yaml -> a.yaml, a -> b -> a, a -> b -> c -> a: a ConfigError naming the files, not RecursionError
    for i, name in enumerate(chain):
        nxt = chain[(i + 1) % len(chain)]
        write(tmp_path, {"base": nxt, "losses": {"weights": {"itc": 1}}}, name)
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "a.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and "loops" in msg
    assert all(name in msg for name in chain)


def test_base_chain_loop_exits_2_with_one_line(tmp_path, capsys):
    from iclf.cli import main

    write(tmp_path, {"base": "b.yaml"}, "a.yaml")
    write(tmp_path, {"base": "a.yaml"}, "b.yaml")
    assert main(["train", str(tmp_path / "a.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.yaml" in err[0] and "b.yaml" in err[0]


def test_a_shared_base_is_not_a_loop(tmp_path):
    # a diamond is fine: two files may name the same base as long as no chain returns to itself
    write(tmp_path, {"losses": {"weights": {"itc": 1}}}, "root.yaml")
    write(tmp_path, {"base": "root.yaml", "seed": 3}, "mid.yaml")
    cfg = load_config(write(tmp_path, {"base": "mid.yaml"}, "top.yaml"))
    assert cfg.seed == 3


def test_model_act_reaches_the_backbone_and_is_checked(tmp_path, capsys):
    from torch import nn

    from iclf.cli import main
    from iclf.engine.trainer import build_model

    path = ROOT / "experiments" / "synthetic.yaml"
    small = ["model.pretrained=null", "model.build_pretrained=false", "model.image_size=[64,32]"]
    for act, cls in (("quick_gelu", "QuickGELU"), ("gelu", "GELU")):
        model = build_model(load_config(path, [*small, f"model.act={act}"]), num_classes=4)
        acts = {type(b.mlp.gelu).__name__ for tower in (model.backbone.visual, model.backbone.text)
                for b in tower.transformer.resblocks}
        assert acts == {cls}
        assert all(isinstance(b.mlp.gelu, nn.Module) for b in model.fusion.blocks if hasattr(b, "mlp"))
    assert main(["train", str(path), "model.act=foo", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.act: 'foo' is not one of 'quick_gelu', 'gelu'" in err[0]


def test_a_frozen_token_embedding_reaches_the_full_finetuning_model():
    from iclf.engine.checkpoint import trainable_state_dict
    from iclf.engine.trainer import build_model

    path = ROOT / "experiments" / "synthetic.yaml"
    small = ["model.pretrained=null", "model.build_pretrained=false", "model.image_size=[64,32]",
             "lora.rank=0"]
    full = build_model(load_config(path, small), num_classes=4)
    frozen = build_model(load_config(path, [*small, "lora.freeze_token_embedding=true"]),
                         num_classes=4)
    assert full.backbone.text.token_embedding.weight.requires_grad
    assert not frozen.backbone.text.token_embedding.weight.requires_grad
    assert (set(trainable_state_dict(full)) - set(trainable_state_dict(frozen))
            == {"backbone.text.token_embedding.weight"})


def test_adam_eps_is_a_deliberate_choice_per_preset_and_searched():
    # iclf_release keeps IRRA's 1e-3 (faithful); iclf (LoRA, fp32 masters) uses 1e-8; the joint
    # search space includes eps
    assert load_config(ROOT / "experiments" / "iclf_release_cuhk.yaml").optim.eps == 1e-3
    assert load_config(ROOT / "experiments" / "irra_cuhk.yaml").optim.eps == 1e-3
    iclf = load_config(ROOT / "experiments" / "iclf_cuhk.yaml")
    assert iclf.optim.eps == 1e-8 and iclf.lora.rank > 0
    space = yaml.safe_load((ROOT / "ablations" / "joint.yaml").read_text())["space"]
    assert "optim.eps" in space
    assert "released ICLF" not in (ROOT / "ablations" / "lora_rank.yaml").read_text().split(
        "not the released ICLF")[0]
