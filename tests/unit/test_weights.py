"""Loading CLIP weights from local files (method.md 1.1): layouts, resizing, strictness, errors."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iclf.models import (
    WeightsError,
    backbone_state_dict_openai_layout,
    create_backbone,
    load_clip_state_dict,
    resize_pos_embed,
)
from iclf.models.registry import BackboneSpec
from iclf.models.weights import _is_torchscript_archive

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    backbone = create_backbone("tiny").eval()
    with torch.no_grad():  # non-zero biases and LayerNorms, so every tensor is checked
        for p in backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return backbone


@pytest.fixture(scope="module")
def openai_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny_openai.pt"
    torch.save(backbone_state_dict_openai_layout(tiny), path)
    return path


def _inputs():
    torch.manual_seed(1)
    ids = torch.randint(1, 49000, (2, 77))
    ids[0, 9], ids[1, 30] = 49407, 49407
    return torch.randn(2, 3, 128, 64), ids


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)
    images, ids = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(images), b.encode_image(images))
        torch.testing.assert_close(a.encode_text(ids), b.encode_text(ids))


# ---- positional-embedding resize ---------------------------------------------------------------


def test_resize_vit_b16_table_to_193():
    table = torch.randn(197, 768)
    out = resize_pos_embed(table, (14, 14), (24, 8))
    assert out.shape == (193, 768)
    torch.testing.assert_close(out[0], table[0], rtol=0, atol=0)  # CLS row kept
    grid = table[1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(24, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[1:], expected.permute(0, 2, 3, 1).reshape(192, 768))


def test_resize_bicubic_is_used():
    table = torch.randn(197, 64)
    bilinear = resize_pos_embed(table, (14, 14), (24, 8), mode="bilinear")
    bicubic = resize_pos_embed(table, (14, 14), (24, 8), mode="bicubic")
    grid = table[1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(24, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(bicubic[1:], expected.permute(0, 2, 3, 1).reshape(192, 64))
    assert not torch.allclose(bilinear, bicubic)


def test_resize_same_grid_and_bad_input():
    table = torch.randn(33, 16)
    assert torch.equal(resize_pos_embed(table, (8, 4), (8, 4)), table)
    with pytest.raises(ValueError, match="grid"):
        resize_pos_embed(table, (14, 14), (24, 8))
    with pytest.raises(ValueError, match="pos_interp"):
        resize_pos_embed(table, (8, 4), (16, 8), mode="nearest")


# ---- layouts -----------------------------------------------------------------------------------


def test_openai_layout_keys(tiny):
    state = backbone_state_dict_openai_layout(tiny)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state
    assert state["transformer.resblocks.2.attn.in_proj_bias"].shape == (3 * 128,)
    assert {"token_embedding.weight", "positional_embedding", "text_projection"} <= set(state)
    assert "ln_final.weight" in state and "visual.proj" in state
    assert not any(k.startswith("text.") or "q_proj" in k for k in state)
    torch.testing.assert_close(
        state["visual.transformer.resblocks.1.attn.in_proj_weight"][128:256],
        tiny.visual.transformer.resblocks[1].attn.k_proj.weight,
    )
    assert state["visual.grid_size"].tolist() == [8, 4]


def test_openai_layout_state_dict_round_trip(tiny, openai_file):
    assert not _is_torchscript_archive(openai_file)  # a torch.save zip, read with weights_only
    loaded = create_backbone("tiny", pretrained=openai_file).eval()
    _assert_same_model(tiny, loaded)


def test_round_trip_resizes_non_square_grid(tiny, openai_file):
    big = create_backbone("tiny", pretrained=openai_file, image_size=(384, 128))
    expected = resize_pos_embed(tiny.visual.positional_embedding.detach(), (8, 4), (24, 8))
    torch.testing.assert_close(big.visual.positional_embedding.detach(), expected)
    bicubic = create_backbone("tiny", pretrained=openai_file, image_size=(384, 128),
                              pos_interp="bicubic")
    assert not torch.allclose(bicubic.visual.positional_embedding, big.visual.positional_embedding)


class _Holder(nn.Module):
    """A scriptable module whose state dict has exactly the given keys (OpenAI's JIT layout)."""

    def __init__(self, state):
        super().__init__()
        for key, value in state.items():
            owner = self
            *path, leaf = key.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_buffer(leaf, value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_loads(tiny, tmp_path):
    state = backbone_state_dict_openai_layout(tiny)
    del state["visual.grid_size"]  # OpenAI archives have no grid key; 8x4 is the target grid
    state["logit_scale"] = torch.tensor(4.6052)
    state["input_resolution"] = torch.tensor(224)
    state["context_length"] = torch.tensor(77)
    state["vocab_size"] = torch.tensor(49408)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(_Holder(state)), str(path))
    assert set(torch.jit.load(str(path)).state_dict()) == set(state)
    assert _is_torchscript_archive(path)
    loaded = create_backbone("tiny", pretrained=path).eval()
    _assert_same_model(tiny, loaded)


def test_open_clip_layout_wrapped_with_module_prefix(tmp_path):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    reference = CLIP(
        embed_dim=128,
        vision_cfg=CLIPVisionCfg(layers=3, width=128, head_width=32, patch_size=16, image_size=224),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=4, layers=3),
        quick_gelu=True,
    )
    state = reference.state_dict()
    path = tmp_path / "open_clip_epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    loaded = create_backbone("tiny", pretrained=path, image_size=(224, 224))
    in_proj = state["transformer.resblocks.1.attn.in_proj_weight"]
    v_proj = loaded.text.transformer.resblocks[1].attn.v_proj.weight
    torch.testing.assert_close(v_proj, in_proj[256:])
    torch.testing.assert_close(loaded.text.token_embedding.weight, state["token_embedding.weight"])
    table = state["visual.positional_embedding"]
    torch.testing.assert_close(loaded.visual.positional_embedding, table)


def test_fp16_checkpoint_loads(tiny, tmp_path):
    # OpenAI's release stores fp16 weights; the backbone keeps fp32 master weights.
    state = {k: (v.half() if v.is_floating_point() else v)
             for k, v in backbone_state_dict_openai_layout(tiny).items()}
    path = tmp_path / "half.pt"
    torch.save(state, path)
    loaded = create_backbone("tiny", pretrained=path, image_size=(384, 128))
    assert loaded.visual.proj.dtype == torch.float32
    torch.testing.assert_close(loaded.visual.proj, tiny.visual.proj, atol=1e-3, rtol=1e-3)


def test_load_clip_state_dict_is_project_layout(openai_file, tiny):
    state = load_clip_state_dict(openai_file)
    assert set(state) == set(tiny.state_dict())
    resized = load_clip_state_dict(openai_file, grid=(24, 8))
    assert resized["visual.positional_embedding"].shape == (193, 128)


# ---- errors ------------------------------------------------------------------------------------


def test_missing_file_names_it_and_says_where(tmp_path):
    path = tmp_path / "nowhere" / "ViT-B-16.pt"
    with pytest.raises(WeightsError, match="not found") as err:
        create_backbone("tiny", pretrained=path)
    assert str(path) in str(err.value) and "ViT-B-16.pt" in str(err.value)
    assert err.value.file == str(path)


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint") as err:
        create_backbone("tiny", pretrained=path)
    assert str(path) in str(err.value)


def test_non_clip_state_dict(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsError, match="not a CLIP") as err:
        create_backbone("tiny", pretrained=path)
    assert str(path) in str(err.value)
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="not a CLIP"):
        create_backbone("tiny", pretrained=path)


def test_wrong_shapes_name_the_file(openai_file):
    other = BackboneSpec(64, 128, 3, 4, 16, 128, 3, 4, image_size=(128, 64))  # embed_dim 64
    with pytest.raises(WeightsError, match="shapes") as err:
        create_backbone(other, pretrained=openai_file)
    message = str(err.value)
    assert str(openai_file) in message and "visual.proj" in message
    assert "text.text_projection" in message


def test_wrong_depth_reports_keys(openai_file):
    deeper = BackboneSpec(128, 128, 4, 4, 16, 128, 3, 4, image_size=(128, 64))
    with pytest.raises(WeightsError, match="missing keys") as err:
        create_backbone(deeper, pretrained=openai_file)
    assert "visual.transformer.resblocks.3.attn.q_proj.weight" in str(err.value)
    assert str(openai_file) in str(err.value)


def test_strict_missing_and_unexpected(tiny, tmp_path):
    state = backbone_state_dict_openai_layout(tiny)
    del state["ln_final.bias"]
    state["visual.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        create_backbone("tiny", pretrained=path)
    message = str(err.value)
    assert "missing keys: text.ln_final.bias" in message
    assert "unexpected keys: visual.extra_head.weight" in message


def test_bad_grid_key(tiny, tmp_path):
    state = backbone_state_dict_openai_layout(tiny)
    state["visual.grid_size"] = torch.tensor([4, 4])
    path = tmp_path / "grid.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="grid_size"):
        create_backbone("tiny", pretrained=path, image_size=(384, 128))
