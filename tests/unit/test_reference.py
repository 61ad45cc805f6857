"""The reference model's names (IRRA / released ICLF): the key mapping, strict checkpoint loading, and
the reference's learning-rate groups on the faithful presets (iclf/models/reference.py,
iclf/engine/optim.py)."""

import functools
from pathlib import Path

import pytest
import torch

from iclf.config import load_config
from iclf.engine.optim import param_table
from iclf.engine.trainer import build_model, param_groups_for
from iclf.models.reference import (ReferenceCheckpointError, load_reference_state_dict,
                                   reference_layout, reference_name, reference_state_dict)
from reference_run import build_reference_model, reference_keys

ROOT = Path(__file__).resolve().parents[2]
CUHK_IDS = 11003


def meta_model(experiment: str, *overrides: str, num_classes: int = CUHK_IDS):
    cfg = load_config(ROOT / "experiments" / experiment, ["model.pretrained=null", *overrides])
    with torch.device("meta"):
        return cfg, build_model(cfg, num_classes=num_classes)


# ------------------------------------------------------------------------- the key layout


@pytest.mark.parametrize("experiment,kind", [("irra_cuhk.yaml", "irra"),
                                             ("iclf_release_cuhk.yaml", "iclf")])
def test_vit_b16_maps_onto_exactly_the_reference_keys(experiment, kind):
    # ViT-B/16 at 384x128, cross-former depth 4, CUHK-PEDES's 11003 training identities: the keys and
    # shapes IRRA's / ICLF's model.state_dict() has (listed in tests/reference_run.py).
    _, model = meta_model(experiment)
    ours = {k: tuple(v.shape) for k, v in reference_state_dict(model).items()}
    want = reference_keys(kind=kind)
    if kind == "irra":
        want["temp"] = ()  # the project's model always has ICLF's temperature; IRRA's lacks it
    assert sorted(set(ours) - set(want)) == [] and sorted(set(want) - set(ours)) == []
    assert {k: ours[k] for k in want} == want


def test_every_reference_name_follows_the_table():
    spot = {
        "backbone.visual.conv1.weight": "base_model.visual.conv1.weight",
        "backbone.visual.transformer.resblocks.11.attn.k_proj.bias":
            "base_model.visual.transformer.resblocks.11.attn.in_proj_bias",
        "backbone.text.transformer.resblocks.0.mlp.c_fc.weight":
            "base_model.transformer.resblocks.0.mlp.c_fc.weight",
        "backbone.text.token_embedding.weight": "base_model.token_embedding.weight",
        "backbone.text.text_projection": "base_model.text_projection",
        "fusion.cross_attn.v_proj.weight": "cross_attn.in_proj_weight",
        "fusion.cross_attn.out_proj.bias": "cross_attn.out_proj.bias",
        "fusion.blocks.3.attn.q_proj.weight":
            "cross_modal_transformer.resblocks.3.attn.in_proj_weight",
        "fusion.ln_pre_i.weight": "ln_pre_i.weight",
        "mlm_head.ln.bias": "mlm_head.ln.bias",
        "itm_head.net.3.weight": "itm_head.3.weight",
        "classifier.fc.weight": "classifier.weight",
        "temp": "temp",
        # LoRA: the wrapped linear keeps its name, the adapters have none
        "backbone.visual.transformer.resblocks.0.attn.q_proj.base_layer.weight":
            "base_model.visual.transformer.resblocks.0.attn.in_proj_weight",
        "backbone.visual.transformer.resblocks.0.attn.q_proj.lora_A.default.weight": None,
        # interlaced fusion has no counterpart in the reference
        "fusion.blocks.0.ln_self.weight": None,
    }
    assert {k: reference_name(k) for k in spot} == spot


# ------------------------------------------------------------------- loading and its errors


@functools.lru_cache(maxsize=None)
def small(kind="irra", seed=0):
    """A tiny model of the reference's architecture (each (kind, seed) built once per session;
    the tests load into a seed of their own)."""
    return build_reference_model(kind=kind, num_classes=6, seed=seed)


def features(model):
    torch.manual_seed(7)
    images = torch.randn(2, 3, 64, 32)
    ids = torch.randint(1, 49000, (2, 77))
    ids[:, 0], ids[:, 9], ids[:, 10:] = 49406, 49407, 0
    with torch.no_grad():
        f = model(images, ids)
        fused = model.fuse(f.text_tokens, f.image_tokens)
        out = [f.image_feat, f.text_feat, fused, model.mlm_head(fused), model.id_logits(f.text_feat)]
        if model.itm_head is not None:
            out.append(model.itm_logits(f.text_tokens, f.image_tokens))
    return out


@pytest.mark.parametrize("kind", ["irra", "iclf"])
def test_round_trip_gives_identical_weights_and_features(kind):
    source = small(kind)
    state = reference_state_dict(source, fp16=kind == "irra")
    halves = {k for k, v in state.items() if v.dtype == torch.float16}
    if kind == "irra":  # IRRA's convert_weights: Linear/Conv/MHA weights, proj, text_projection
        assert "base_model.visual.proj" in halves and "cross_attn.in_proj_weight" in halves
        assert "base_model.token_embedding.weight" not in halves and "ln_post.weight" not in halves
    else:
        assert not halves
    target = small(kind, seed=1 if kind == "irra" else 4)
    load_reference_state_dict(target, state)
    for (n, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        assert torch.equal(a, b), n
    for a, b in zip(features(source), features(target)):
        assert torch.equal(a, b)


def test_loading_is_strict_and_names_the_first_key():
    state = reference_state_dict(small("irra"))
    target = small("irra", seed=3)
    before = [p.clone() for p in target.parameters()]
    with pytest.raises(ReferenceCheckpointError, match=r"key 'itm_head.0.weight' does not map"):
        load_reference_state_dict(target, {**state, "itm_head.0.weight": torch.zeros(2, 2)})
    short = {k: v for k, v in state.items() if k != "ln_pre_i.bias"}
    with pytest.raises(ReferenceCheckpointError, match=r"'ln_pre_i.bias' \(fusion.ln_pre_i.bias\) "
                                                      r"is not in the checkpoint"):
        load_reference_state_dict(target, short)
    wrong = dict(state, **{"classifier.weight": torch.zeros(11003, 128)})
    with pytest.raises(ReferenceCheckpointError, match=r"'classifier.weight' has shape \(11003, 128\)"
                                                      r".*training identities"):
        load_reference_state_dict(target, wrong)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))  # all or nothing
    # IRRA's checkpoints have no temp: allowed (IRRA's losses do not use it)
    load_reference_state_dict(target, {k: v for k, v in state.items() if k != "temp"})
    # ICLF's unused BERT is known and skipped
    iclf_state = dict(reference_state_dict(small("iclf")),
                      **{"text_feats_2_bert.weight": torch.zeros(768, 128),
                         "text_encoder.bert.encoder.layer.0.output.dense.bias": torch.zeros(768)})
    load_reference_state_dict(small("iclf", seed=2), iclf_state)


def test_lora_model_loads_the_base_weights():
    from iclf.models.iclf import build_iclf_model
    from iclf.models.lora import LoraSettings

    source = small("irra")
    lora = build_iclf_model("tiny", None, (64, 32), num_classes=6, fusion_style="irra",
                            fusion_depth=1, fusion_heads=2, lora=LoraSettings(rank=4, alpha=8),
                            need_mlm=True, need_itm=False, need_id=True)
    load_reference_state_dict(lora, reference_state_dict(source))
    for a, b in zip(features(source), features(lora)):  # B = 0 at init: the same function
        torch.testing.assert_close(a, b)


def test_a_model_the_reference_cannot_express_is_refused():
    from iclf.models.iclf import build_iclf_model

    model = build_iclf_model("tiny", None, (64, 32), num_classes=6, fusion_style="interlaced",
                             fusion_depth=1, fusion_heads=2, lora=None, need_mlm=True,
                             need_itm=False, need_id=True)
    with pytest.raises(ReferenceCheckpointError, match=r"fusion.blocks.0.* has no counterpart"):
        reference_layout(model)


# ----------------------------------------------------------- the reference's lr / wd table

LR, WD, FACTOR, BIAS_FACTOR, WD_BIAS = 1e-5, 4e-5, 5.0, 2.0, 0.0


def irra_solver_rule(name: str) -> tuple[float, float]:
    """IRRA's solver/build.py, written out on its own parameter names (rules in order)."""
    lr, wd = LR, WD
    if "cross" in name:
        lr = LR * FACTOR
    if "bias" in name:
        lr, wd = LR * BIAS_FACTOR, WD_BIAS
    if "classifier" in name or "mlm_head" in name:
        lr = LR * FACTOR
    return lr, wd


@pytest.mark.parametrize("experiment,kind", [("irra_cuhk.yaml", "irra"),
                                             ("iclf_release_cuhk.yaml", "iclf")])
def test_faithful_presets_give_every_parameter_the_reference_lr_and_wd(experiment, kind):
    cfg, model = meta_model(experiment)
    assert cfg.optim.groups == "reference"
    rows = {r["name"]: (r["lr"], r["weight_decay"])
            for r in param_table(model.named_parameters(), param_groups_for(cfg, model))}
    assert len(rows) == sum(1 for p in model.parameters() if p.requires_grad)
    # the table derived from the reference's own parameter names ...
    expected = {ref: irra_solver_rule(ref) for ref in reference_keys(kind=kind)}
    expected.setdefault("temp", irra_solver_rule("temp"))
    # ... must be what every project parameter holding that reference key gets
    for ref, names in reference_layout(model).items():
        for name in names:
            assert rows[name] == pytest.approx(expected[ref]), (name, ref)
    # the rows the issue lists, by the project's own names
    spot = {
        "fusion.blocks.0.attn.q_proj.bias": (2e-5, 0.0),  # cross-former biases: 2e-5, no decay
        "fusion.blocks.3.mlp.c_fc.bias": (2e-5, 0.0),
        "fusion.cross_attn.k_proj.bias": (2e-5, 0.0),
        "fusion.cross_attn.out_proj.weight": (5e-5, 4e-5),
        "fusion.blocks.1.ln_2.weight": (5e-5, 4e-5),
        "fusion.ln_pre_t.weight": (1e-5, 4e-5),  # ln_pre_t / ln_pre_i / ln_post: base lr
        "fusion.ln_pre_i.weight": (1e-5, 4e-5),
        "fusion.ln_post.weight": (1e-5, 4e-5),
        "mlm_head.fc.bias": (5e-5, 0.0),
        "mlm_head.dense.weight": (5e-5, 4e-5),
        "classifier.fc.bias": (5e-5, 0.0),
        "backbone.visual.conv1.weight": (1e-5, 4e-5),
        "backbone.text.transformer.resblocks.5.attn.v_proj.bias": (2e-5, 0.0),
        "temp": (1e-5, 4e-5),  # temperature: weight decay 4e-5
    }
    if kind == "iclf":
        spot.update({"itm_head.net.0.weight": (1e-5, 4e-5), "itm_head.net.1.weight": (1e-5, 4e-5),
                     "itm_head.net.3.weight": (1e-5, 4e-5),  # ITM head weights: 1e-5
                     "itm_head.net.0.bias": (2e-5, 0.0), "itm_head.net.3.bias": (2e-5, 0.0)})
    for name, want in spot.items():
        assert rows[name] == pytest.approx(want), name


def test_module_groups_stay_for_lora_and_are_refused_by_reference():
    from iclf.config import ConfigError

    cfg, model = meta_model("iclf_cuhk.yaml")
    assert cfg.optim.groups == "module" and cfg.optim.eps == 1e-8
    groups = {g["name"] for g in param_groups_for(cfg, model)}
    assert {"adapters", "new", "backbone"} <= groups
    with pytest.raises(ConfigError, match=r"optim.groups: 'reference' .* no LoRA adapters"):
        load_config(ROOT / "experiments" / "iclf_cuhk.yaml", ["optim.groups=reference"])
    with pytest.raises(ConfigError, match=r"optim.groups: 'reference' .* no 'interlaced' fusion"):
        load_config(ROOT / "experiments" / "iclf_cuhk.yaml",
                    ["optim.groups=reference", "lora.rank=0"])


def test_groups_setting_changes_the_optimiser():
    cfg_ref, model = meta_model("iclf_release_cuhk.yaml")
    cfg_mod, _ = meta_model("iclf_release_cuhk.yaml", "optim.groups=module")
    ref = {r["name"]: r["lr"] for r in param_table(model.named_parameters(),
                                                   param_groups_for(cfg_ref, model))}
    mod = {r["name"]: r["lr"] for r in param_table(model.named_parameters(),
                                                   param_groups_for(cfg_mod, model))}
    assert ref["fusion.blocks.0.attn.q_proj.bias"] == pytest.approx(2e-5)
    assert mod["fusion.blocks.0.attn.q_proj.bias"] == pytest.approx(5e-5)


def test_show_param_groups_prints_the_table(capsys):
    from iclf.cli import main

    assert main(["train", str(ROOT / "experiments" / "iclf_release_cuhk.yaml"), "--dry-run",
                 "--show-param-groups"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()
             if line and not line.startswith(("#", "-", "parameter"))}
    assert lines["fusion.blocks.{0-3}.attn.q_proj.bias"][:3] == [
        "cross_modal_transformer.resblocks.{0-3}.attn.in_proj_bias", "2e-05", "0"]
    assert lines["itm_head.net.{0,1,3}.weight"][:3] == ["itm_head.{0,1,3}.weight", "1e-05", "4e-05"]
    assert lines["temp"][:3] == ["temp", "1e-05", "4e-05"]
    assert "490 trainable tensors in 4 groups" in out
