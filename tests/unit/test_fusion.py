"""Fusion module (method.md 1.4, 1.6): shapes, knobs, initialisation, error handling."""

import pytest
import torch
from torch import nn

from iclf.models.clip import Attention
from iclf.models.fusion import FUSION_STYLES, Fusion

W, HEADS = 32, 4


def _inputs(b: int = 2, length: int = 7, n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, W, generator=g), torch.randn(b, n, W, generator=g)


@pytest.mark.parametrize("style", FUSION_STYLES)
@pytest.mark.parametrize("depth", [1, 2])
def test_output_shape_and_finite(style, depth):
    torch.manual_seed(0)
    fusion = Fusion(style, depth, W, HEADS)
    text, image = _inputs()
    out = fusion(text, image)
    assert out.shape == text.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("style", FUSION_STYLES)
def test_output_depends_on_image_and_text(style):
    torch.manual_seed(0)
    fusion = Fusion(style, 2, W, HEADS)
    text, image = _inputs()
    out = fusion(text, image)
    text2, image2 = _inputs(seed=1)
    assert not torch.allclose(out, fusion(text, image2))
    assert not torch.allclose(out, fusion(text2, image))


@pytest.mark.parametrize("style", FUSION_STYLES)
def test_depth_changes_output(style):
    text, image = _inputs()
    outs = []
    for depth in (1, 2, 3):
        torch.manual_seed(0)
        outs.append(Fusion(style, depth, W, HEADS)(text, image))
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[1], outs[2])


def test_style_changes_output():
    text, image = _inputs()
    outs = {}
    for style in FUSION_STYLES:
        torch.manual_seed(0)
        outs[style] = Fusion(style, 1, W, HEADS)(text, image)
    for a in FUSION_STYLES:
        for b in FUSION_STYLES:
            if a < b:
                assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_heads_change_output():
    text, image = _inputs()
    torch.manual_seed(0)
    a = Fusion("irra", 1, W, 2)(text, image)
    torch.manual_seed(0)
    b = Fusion("irra", 1, W, 8)(text, image)
    assert not torch.allclose(a, b)


def test_irra_cross_attention_has_no_residual():
    """method.md 1.4: the text enters the blocks only through the cross-attention output."""
    torch.manual_seed(0)
    fusion = Fusion("irra", 1, W, HEADS)
    text, image = _inputs(b=1, n=1)
    # With a single image token, the attention output is the same for every query position, so
    # without a residual the whole output is the same for every text position and independent of
    # the text values.
    out = fusion(text, image)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5)
    assert torch.allclose(out, fusion(torch.randn_like(text), image), atol=1e-5)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(W, HEADS)
    ref = nn.MultiheadAttention(W, HEADS, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(
            torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight])
        )
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    q, kv = _inputs()
    expected, _ = ref(q, kv, kv, need_weights=False)
    assert torch.allclose(ours(q, context=kv), expected, atol=1e-5)


def test_initialisation_follows_method_1_4():
    width, depth = 256, 4
    torch.manual_seed(0)
    fusion = Fusion("irra", depth, width, 8)
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * depth) ** -0.5
    fc_std = (2 * width) ** -0.5

    def close(t, std):
        return abs(t.std().item() - std) / std < 0.05

    for attn in [fusion.cross_attn] + [b.attn for b in fusion.blocks]:
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            assert close(lin.weight, attn_std)
            assert torch.count_nonzero(lin.bias) == 0
        assert close(attn.out_proj.weight, proj_std)
    for block in fusion.blocks:
        assert close(block.mlp.c_fc.weight, fc_std)
        assert close(block.mlp.c_proj.weight, proj_std)
    for module in fusion.modules():
        if isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_backward_reaches_every_parameter():
    for style in FUSION_STYLES:
        torch.manual_seed(0)
        fusion = Fusion(style, 2, W, HEADS)
        text, image = _inputs()
        fusion(text, image).square().sum().backward()
        for name, p in fusion.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (style, name)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="depth"):
        Fusion("irra", 0, W, HEADS)
    with pytest.raises(ValueError, match="divide"):
        Fusion("irra", 1, W, 5)
    with pytest.raises(ValueError, match="style"):
        Fusion("bert", 1, W, HEADS)
    fusion = Fusion("irra", 1, W, HEADS)
    text, image = _inputs()
    with pytest.raises(ValueError, match="width"):
        fusion(text[..., :16], image[..., :16])
    with pytest.raises(ValueError, match="batch"):
        fusion(text, image[:1])
