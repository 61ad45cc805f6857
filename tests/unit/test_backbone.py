"""The project's CLIP backbone: structure, shapes and behaviour (method.md 1.1-1.3, design.md)."""

import pytest
import torch
from torch import nn

from iclf.models import BackboneSpec, CLIPBackbone, create_backbone, get_spec, list_backbones
from iclf.tokenizer import EOT_ID, Tokenizer


@pytest.fixture(scope="module")
def tiny() -> CLIPBackbone:
    torch.manual_seed(0)
    return create_backbone("tiny").eval()


def _ids(batch: int, eot_positions: list[int]) -> torch.Tensor:
    ids = torch.randint(1, 49000, (batch, 77))
    for row, pos in enumerate(eot_positions):
        ids[row, pos] = EOT_ID
        ids[row, pos + 1 :] = 0
    return ids


def test_registry():
    assert {"ViT-B-16", "tiny"} <= set(list_backbones())
    b16 = get_spec("ViT-B-16")
    assert (b16.embed_dim, b16.vision_width, b16.vision_layers) == (512, 768, 12)
    assert b16.vision_heads == 12
    assert (b16.text_width, b16.text_layers, b16.text_heads, b16.patch_size) == (512, 12, 8, 16)
    assert (b16.vocab_size, b16.context_length, b16.image_size) == (49408, 77, (384, 128))
    t = get_spec("tiny")
    assert (t.embed_dim, t.vision_width, t.vision_layers, t.vision_heads) == (128, 128, 3, 4)
    assert (t.text_width, t.text_layers, t.text_heads, t.image_size) == (128, 3, 4, (128, 64))
    with pytest.raises(Exception):
        b16.embed_dim = 1  # frozen


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match="ViT-B-16.*tiny|tiny.*ViT-B-16"):
        create_backbone("ViT-Z-99")


def test_bad_spec():
    with pytest.raises(ValueError, match="divisible"):
        BackboneSpec(64, 64, 2, 5, 16, 64, 2, 4)


def test_shapes_default_size(tiny):
    assert tiny.image_size == (128, 64) and tiny.grid == (8, 4) and tiny.num_image_tokens == 33
    assert (tiny.embed_dim, tiny.context_length, tiny.vocab_size) == (128, 77, 49408)
    images, ids = torch.randn(2, 3, 128, 64), _ids(2, [5, 76])
    with torch.no_grad():
        assert tiny.encode_image_tokens(images).shape == (2, 33, 128)
        assert tiny.encode_image(images).shape == (2, 128)
        assert tiny.encode_text_tokens(ids).shape == (2, 77, 128)
        assert tiny.encode_text(ids).shape == (2, 128)


def test_shapes_384x128():
    backbone = create_backbone("tiny", image_size=(384, 128)).eval()
    assert backbone.grid == (24, 8) and backbone.num_image_tokens == 193
    assert backbone.visual.positional_embedding.shape == (193, 128)
    with torch.no_grad():
        tokens = backbone.encode_image_tokens(torch.randn(2, 3, 384, 128))
        text = backbone.encode_text_tokens(Tokenizer()(["a red coat", "blue jeans"]))
    assert tokens.shape == (2, 193, 128) and text.shape == (2, 77, 128)


def test_vit_b16_structure_on_meta_device():
    with torch.device("meta"):
        backbone = create_backbone("ViT-B-16")
    state = backbone.state_dict()
    assert state["visual.positional_embedding"].shape == (193, 768)
    assert state["visual.conv1.weight"].shape == (768, 3, 16, 16)
    assert state["visual.proj"].shape == (768, 512)
    assert state["text.text_projection"].shape == (512, 512)
    assert state["text.token_embedding.weight"].shape == (49408, 512)
    assert state["text.positional_embedding"].shape == (77, 512)
    # open_clip's ViT-B-16 at 384x128 has 149.6 M parameters including logit_scale.
    assert 149.4e6 < sum(p.numel() for p in backbone.parameters()) < 149.8e6


def test_state_dict_keys_follow_design(tiny):
    keys = set(tiny.state_dict())
    for key in [
        "visual.conv1.weight",
        "visual.class_embedding",
        "visual.positional_embedding",
        "visual.ln_pre.weight",
        "visual.ln_post.bias",
        "visual.proj",
        "visual.transformer.resblocks.2.attn.q_proj.weight",
        "visual.transformer.resblocks.0.attn.out_proj.bias",
        "visual.transformer.resblocks.1.mlp.c_fc.weight",
        "visual.transformer.resblocks.1.mlp.c_proj.bias",
        "text.token_embedding.weight",
        "text.positional_embedding",
        "text.transformer.resblocks.0.attn.k_proj.bias",
        "text.transformer.resblocks.2.ln_2.weight",
        "text.ln_final.weight",
        "text.text_projection",
    ]:
        assert key in keys, key
    assert "visual.conv1.bias" not in keys
    assert not any("attn_mask" in k for k in keys)  # the causal mask is not a weight


def test_every_projection_is_a_named_linear(tiny):
    names = {n.rsplit(".", 1)[-1] for n, m in tiny.named_modules() if isinstance(m, nn.Linear)}
    assert names == {"q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"}
    linears = [m for m in tiny.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6 * (3 + 3) and all(m.bias is not None for m in linears)


def test_encode_image_is_cls_token(tiny):
    images = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        tokens = tiny.encode_image_tokens(images)
        torch.testing.assert_close(tiny.encode_image(images), tokens[:, 0])


def test_encode_text_takes_eot_and_is_causal(tiny):
    ids = _ids(3, [4, 20, 76])
    with torch.no_grad():
        tokens = tiny.encode_text_tokens(ids)
        feats = tiny.encode_text(ids)
        torch.testing.assert_close(feats, tokens[torch.arange(3), torch.tensor([4, 20, 76])])
        changed = ids.clone()
        changed[0, 5:] = 123  # after EOT (still smaller than EOT_ID): the causal mask hides it
        torch.testing.assert_close(tiny.encode_text(changed)[0], feats[0])
        assert not torch.allclose(tiny.encode_text_tokens(changed)[0, 5:], tokens[0, 5:])


def test_patches_are_row_major(tiny):
    # Perturbing the patch at grid (row 1, col 2) changes token 1 + 1*4 + 2 most in the first block.
    images = torch.zeros(1, 3, 128, 64)
    other = images.clone()
    other[:, :, 16:32, 32:48] = 1.0
    with torch.no_grad():
        patches = tiny.visual.conv1(other).flatten(2).transpose(1, 2)
        base = tiny.visual.conv1(images).flatten(2).transpose(1, 2)
    changed = (patches - base).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [1 * 4 + 2]


def test_features_are_sane_at_init(tiny):
    assert abs(tiny.text.token_embedding.weight.std().item() - 0.02) < 0.002
    assert abs(tiny.text.positional_embedding.std().item() - 0.01) < 0.002
    images = torch.randn(4, 3, 128, 64)
    with torch.no_grad():
        feats = tiny.encode_image(images)
        text = tiny.encode_text(_ids(4, [3, 9, 15, 40]))
    assert torch.isfinite(feats).all() and torch.isfinite(text).all()
    assert torch.cdist(feats, feats).triu(1)[0, 1:].min() > 1e-3  # different inputs differ
    assert torch.cdist(text, text).triu(1)[0, 1:].min() > 1e-3


def test_backward_reaches_all_parameters():
    torch.manual_seed(0)
    backbone = create_backbone("tiny")
    loss = backbone.encode_image(torch.randn(2, 3, 128, 64)).sum()
    loss = loss + backbone.encode_text(_ids(2, [6, 9])).sum()
    loss.backward()
    no_grad = [n for n, p in backbone.named_parameters() if p.grad is None]
    assert no_grad == []


def test_bf16_autocast_runs_with_causal_mask(tiny):
    ids = _ids(2, [5, 7])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        text = tiny.encode_text(ids)
        image = tiny.encode_image(torch.randn(2, 3, 128, 64))
    assert text.dtype == image.dtype == torch.bfloat16
    with torch.no_grad():
        exact = tiny.encode_text(ids)
    assert torch.cosine_similarity(text.float(), exact, dim=-1).min() > 0.99


def test_stride_changes_the_grid():
    backbone = create_backbone("tiny", image_size=(136, 64), stride=12)
    assert backbone.grid == (11, 5) and backbone.num_image_tokens == 56
    assert backbone.visual.conv1.stride == (12, 12)
    with torch.no_grad():
        assert backbone.encode_image_tokens(torch.randn(1, 3, 136, 64)).shape == (1, 56, 128)


def test_bad_sizes_are_refused(tiny):
    with pytest.raises(ValueError, match="stride"):
        create_backbone("tiny", image_size=(130, 64))
    with pytest.raises(ValueError, match=r"\(128, 64\)"):
        tiny.encode_image(torch.randn(1, 3, 384, 128))
    with pytest.raises(ValueError, match="77"):
        tiny.encode_text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="pos_interp"):
        create_backbone("tiny", pos_interp="nearest")


def test_spec_object_accepted():
    spec = BackboneSpec(32, 32, 1, 2, 16, 32, 1, 2, image_size=(32, 16))
    backbone = create_backbone(spec)
    assert backbone.name == "custom" and backbone.grid == (2, 1) and backbone.embed_dim == 32
