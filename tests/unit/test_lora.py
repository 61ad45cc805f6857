"""LoRA through peft on the tiny backbone (method.md 1.7), checked by invariants."""

import dataclasses

import pytest
import torch
from torch import nn

from iclf.models import create_backbone
from iclf.models.lora import (
    LoraSettings,
    adapter_parameters,
    adapter_state_dict,
    apply_lora,
    count_trainable,
    expected_lora_params,
    load_adapter_state_dict,
    lora_target_names,
    merge_lora,
)
from iclf.models.registry import get_spec
from iclf.tokenizer import EOT_ID

ALL = ["q", "k", "v", "out", "mlp"]


@pytest.fixture(scope="module")
def base_state():
    torch.manual_seed(0)
    return create_backbone("tiny").state_dict()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 128, 64, generator=g)
    ids = torch.randint(1, 1000, (2, 77), generator=g)
    ids[:, 0] = EOT_ID - 1  # SOT
    ids[0, 9], ids[1, 14] = EOT_ID, EOT_ID
    ids[0, 10:], ids[1, 15:] = 0, 0
    return images, ids


def _backbone(base_state) -> nn.Module:
    backbone = create_backbone("tiny")
    backbone.load_state_dict(base_state)
    return backbone


def _encode(backbone, inputs):
    images, ids = inputs
    with torch.no_grad():
        return backbone.encode_image(images), backbone.encode_text(ids)


def _randomise_b(backbone, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("variant", ["lora", "dora", "rslora"])
def test_zero_b_leaves_outputs_unchanged(base_state, inputs, variant):
    ref = _encode(_backbone(base_state), inputs)
    backbone = apply_lora(
        _backbone(base_state), LoraSettings(rank=4, targets={"vision": ALL, "text": ALL},
                                            variant=variant)
    ).eval()
    out = _encode(backbone, inputs)
    for a, b in zip(ref, out):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("variant", ["lora", "dora", "rslora"])
def test_merged_equals_unmerged(base_state, inputs, variant):
    settings = LoraSettings(rank=4, alpha=8, targets={"vision": ALL, "text": ALL}, variant=variant)
    backbone = apply_lora(_backbone(base_state), settings).eval()
    _randomise_b(backbone)
    unmerged = _encode(backbone, inputs)
    assert not torch.allclose(unmerged[0], _encode(_backbone(base_state), inputs)[0], atol=1e-4)
    merge_lora(backbone)
    merged = _encode(backbone, inputs)
    for a, b in zip(unmerged, merged):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # unloading leaves a plain backbone with the original keys and the same outputs
    merge_lora(backbone, unload=True)
    assert set(backbone.state_dict()) == set(base_state)
    assert not adapter_parameters(backbone)
    for a, b in zip(unmerged, _encode(backbone, inputs)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    "targets, variant",
    [
        ({"vision": ["q", "k", "v", "out"]}, "lora"),
        ({"text": ["q", "k", "v", "out"]}, "lora"),
        ({"vision": ["q", "v"], "text": ["q", "v"]}, "lora"),
        ({"vision": ALL, "text": ALL}, "lora"),
        ({"vision": ["mlp"], "text": ["k", "out"]}, "dora"),
        ({"vision": ALL, "text": ALL}, "dora"),
    ],
)
def test_only_adapters_train_and_count_matches_closed_form(base_state, targets, variant):
    settings = LoraSettings(rank=4, targets=targets, variant=variant)
    backbone = apply_lora(_backbone(base_state), settings)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    towers = {"vision": "visual.", "text": "text."}
    assert {n.split(".")[0] + "." for n in trainable} == {towers[t] for t in targets}
    expected = expected_lora_params(get_spec("tiny"), settings)
    assert count_trainable(backbone) == expected
    assert expected_lora_params(backbone, settings) == expected
    assert sum(p.numel() for p in adapter_parameters(backbone)) == expected
    # the formula by hand for one case: tiny towers are 128 wide with 3 blocks
    if targets == {"vision": ["q", "v"], "text": ["q", "v"]}:
        assert expected == 2 * 3 * 2 * 4 * (128 + 128)


def test_target_names_stay_in_their_tower(base_state):
    backbone = _backbone(base_state)
    names = lora_target_names(backbone, LoraSettings(rank=2, targets={"vision": ["q", "mlp"]}))
    assert len(names) == 3 * 3
    assert all(n.startswith("visual.transformer.resblocks.") for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "c_fc", "c_proj"}


def test_norms_and_projections_switches(base_state):
    settings = LoraSettings(rank=2, targets={"vision": ["q"]})
    plain = count_trainable(apply_lora(_backbone(base_state), settings))
    backbone = _backbone(base_state)
    norms = sum(
        p.numel() for m in backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()
    )
    projs = backbone.visual.proj.numel() + backbone.text.text_projection.numel()
    with_norms = apply_lora(backbone, LoraSettings(rank=2, targets={"vision": ["q"]},
                                                   train_norms=True))
    assert count_trainable(with_norms) == plain + norms
    assert with_norms.visual.ln_post.weight.requires_grad
    assert not with_norms.visual.proj.requires_grad
    with_proj = apply_lora(_backbone(base_state), LoraSettings(rank=2, targets={"vision": ["q"]},
                                                                train_proj=True))
    assert count_trainable(with_proj) == plain + projs
    assert with_proj.text.text_projection.requires_grad


def test_rank_zero_is_full_finetuning(base_state):
    backbone = _backbone(base_state)
    for p in backbone.parameters():
        p.requires_grad_(False)
    apply_lora(backbone, LoraSettings(rank=0))
    assert count_trainable(backbone) == sum(p.numel() for p in backbone.parameters())
    assert adapter_parameters(backbone) == []
    assert expected_lora_params(get_spec("tiny"), LoraSettings(rank=0)) == 0


def test_full_finetuning_can_keep_the_token_embedding_frozen(base_state):
    backbone = apply_lora(_backbone(base_state), LoraSettings(rank=0, freeze_token_embedding=True))
    embedding = backbone.text.token_embedding.weight
    assert not embedding.requires_grad
    assert count_trainable(backbone) == (sum(p.numel() for p in backbone.parameters())
                                         - embedding.numel())
    # With LoRA the embedding is frozen either way: the setting changes nothing there.
    lora = LoraSettings(rank=2, targets={"text": ["q"]})
    with_lora = apply_lora(_backbone(base_state), lora)
    frozen = apply_lora(_backbone(base_state),
                        dataclasses.replace(lora, freeze_token_embedding=True))
    assert count_trainable(frozen) == count_trainable(with_lora)
    assert not with_lora.text.token_embedding.weight.requires_grad


def test_adapter_state_dict_round_trips(base_state, inputs, tmp_path):
    settings = LoraSettings(rank=4, targets={"vision": ALL, "text": ["q", "v"]}, variant="dora")
    source = apply_lora(_backbone(base_state), settings).eval()
    _randomise_b(source, seed=3)
    sd = adapter_state_dict(source)
    assert sd and all(".lora_" in k for k in sd)
    assert sum(v.numel() for v in sd.values()) == expected_lora_params(get_spec("tiny"), settings)
    path = tmp_path / "adapter.pt"
    torch.save(sd, path)

    torch.manual_seed(123)  # fresh adapters with different A
    target = apply_lora(_backbone(base_state), settings).eval()
    assert not torch.allclose(_encode(source, inputs)[0], _encode(target, inputs)[0])
    load_adapter_state_dict(target, torch.load(path, weights_only=True))
    for a, b in zip(_encode(source, inputs), _encode(target, inputs)):
        assert torch.equal(a, b)


def test_load_adapter_state_dict_is_strict(base_state):
    settings = LoraSettings(rank=4, targets={"vision": ["q"]})
    sd = adapter_state_dict(apply_lora(_backbone(base_state), settings))
    other = apply_lora(_backbone(base_state), LoraSettings(rank=4, targets={"vision": ["q", "k"]}))
    with pytest.raises(ValueError, match="missing keys"):
        load_adapter_state_dict(other, sd)
    bigger = apply_lora(_backbone(base_state), LoraSettings(rank=8, targets={"vision": ["q"]}))
    with pytest.raises(ValueError, match="shape"):
        load_adapter_state_dict(bigger, sd)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        load_adapter_state_dict(_backbone(base_state), sd)


def test_alpha_and_dropout_are_live(base_state):
    torch.manual_seed(0)
    x = torch.randn(5, 128)

    def q_layer(alpha, dropout, variant="lora"):
        backbone = apply_lora(
            _backbone(base_state),
            LoraSettings(rank=4, alpha=alpha, dropout=dropout, targets={"vision": ["q"]},
                         variant=variant),
        )
        _randomise_b(backbone)
        torch.manual_seed(7)
        with torch.no_grad():
            for name, p in backbone.named_parameters():
                if ".lora_A." in name:
                    p.normal_(std=0.1)
        return backbone.visual.transformer.resblocks[0].attn.q_proj

    with torch.no_grad():
        layer8, layer16 = q_layer(8, 0.0).eval(), q_layer(16, 0.0).eval()
        base = layer8.get_base_layer()(x)
        delta8, delta16 = layer8(x) - base, layer16(x) - base
        assert delta8.abs().max() > 1e-4
        assert torch.allclose(delta16, 2 * delta8, atol=1e-5)  # scaling alpha / r
        rs = q_layer(8, 0.0, variant="rslora")
        assert rs.scaling["default"] == pytest.approx(8 / 4**0.5)
        assert layer8.scaling["default"] == pytest.approx(8 / 4)

        no_drop = q_layer(8, 0.0).train()
        assert torch.equal(no_drop(x), layer8(x))
        drop = q_layer(8, 0.5).train()
        torch.manual_seed(0)
        first = drop(x)
        assert not torch.allclose(first, drop(x))
        assert not torch.allclose(first, layer8(x))
        assert torch.allclose(drop.eval()(x), layer8(x))


@pytest.mark.parametrize("variant", ["lora", "dora", "rslora"])
def test_one_step_changes_only_trainable(base_state, inputs, variant):
    settings = LoraSettings(rank=4, dropout=0.1, targets={"vision": ["q", "v", "mlp"],
                                                          "text": ["out"]}, variant=variant,
                            train_norms=True)
    backbone = apply_lora(_backbone(base_state), settings).train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    images, ids = inputs
    loss = backbone.encode_image(images).square().sum() + backbone.encode_text(ids).square().sum()
    loss.backward()
    assert all(p.grad is not None for p in params)
    opt.step()
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    after = backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    assert any(".lora_B." in k for k in changed)


def test_bad_settings_raise(base_state):
    with pytest.raises(ValueError, match="tower"):
        LoraSettings(rank=4, targets={"audio": ["q"]})
    with pytest.raises(ValueError, match="unknown target"):
        LoraSettings(rank=4, targets={"vision": ["query"]})
    with pytest.raises(ValueError, match="no layer"):
        LoraSettings(rank=4, targets={"vision": []})
    with pytest.raises(ValueError, match="variant"):
        LoraSettings(rank=4, variant="loha")
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(rank=-1)
    backbone = apply_lora(_backbone(base_state), LoraSettings(rank=2))
    with pytest.raises(ValueError, match="already"):
        apply_lora(backbone, LoraSettings(rank=2))
