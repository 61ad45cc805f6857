"""Parity with open_clip, the reference implementation (method.md 1.1-1.3; style.md 9.12).

A small open_clip CLIP with random weights is saved to disk, loaded through iclf's weight loader
into the matching spec, and both must give the same features. open_clip never touches the network
(pretrained=None, HF_HUB_OFFLINE=1).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from iclf.models import BackboneSpec, create_backbone  # noqa: E402
from iclf.models.clip import QuickGELU  # noqa: E402
from iclf.tokenizer import Tokenizer  # noqa: E402

open_clip = pytest.importorskip("open_clip")

WIDTH, LAYERS, HEADS = 64, 2, 4
SPEC = BackboneSpec(
    embed_dim=64,
    vision_width=WIDTH,
    vision_layers=LAYERS,
    vision_heads=HEADS,
    patch_size=16,
    text_width=WIDTH,
    text_layers=LAYERS,
    text_heads=HEADS,
    image_size=(224, 224),
)
CAPTIONS = [
    "a person wearing a red jacket and black trousers",
    "the woman carries a white handbag and wears a long blue dress with short sleeves",
    "a man",
]


def _open_clip_model(image_size) -> torch.nn.Module:
    cfg = {
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": image_size,
            "layers": LAYERS,
            "width": WIDTH,
            "head_width": WIDTH // HEADS,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": WIDTH,
            "heads": HEADS,
            "layers": LAYERS,
        },
    }
    return open_clip.model.CLIP(**cfg).eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    model = _open_clip_model(224)
    with torch.no_grad():  # perturb every tensor so zero biases / unit LayerNorms are checked too
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("open_clip") / "small_clip.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_features_match_open_clip_at_224(reference):
    model, path = reference
    ours = create_backbone(SPEC, pretrained=path).eval()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 224, 224)
    ids = Tokenizer()(CAPTIONS)
    with torch.no_grad():
        ref_image = model.encode_image(images, normalize=False)
        ref_text = model.encode_text(ids, normalize=False)
        torch.testing.assert_close(ours.encode_image(images), ref_image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(ids), ref_text, atol=1e-5, rtol=1e-5)
    assert ref_image.abs().mean() > 0.1 and ref_text.abs().mean() > 0.1  # not a trivial match
    assert torch.cdist(ref_text, ref_text)[0, 1:].min() > 1e-2


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_position_table_resized_to_384x128(reference, mode):
    model, path = reference
    ours = create_backbone(SPEC, pretrained=path, image_size=(384, 128), pos_interp=mode)
    table = model.visual.positional_embedding.detach()  # (197, 64)
    grid = table[1:].reshape(1, 14, 14, WIDTH).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(24, 8), mode=mode, align_corners=False)
    expected = torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(192, WIDTH)])
    assert ours.visual.positional_embedding.shape == (193, WIDTH)
    torch.testing.assert_close(ours.visual.positional_embedding.detach(), expected)


def test_image_tokens_match_open_clip_at_384x128(reference):
    # Same weights and the same resized table in open_clip's 384x128 ViT: checks row-major patches.
    model, path = reference
    ours = create_backbone(SPEC, pretrained=path, image_size=(384, 128)).eval()
    tall = _open_clip_model((384, 128))
    state = dict(model.state_dict())
    state["visual.positional_embedding"] = ours.visual.positional_embedding.detach().clone()
    tall.load_state_dict(state)
    torch.manual_seed(2)
    images = torch.randn(2, 3, 384, 128)
    with torch.no_grad():
        reference_feats = tall.encode_image(images, normalize=False)
        tokens = ours.encode_image_tokens(images)
    assert tokens.shape == (2, 193, 64)
    torch.testing.assert_close(tokens[:, 0], reference_feats, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# model.act: open_clip's own ViT-B-16 (every non-OpenAI checkpoint of it) uses the exact GELU.


@pytest.fixture(scope="module")
def open_clip_vit_b16(tmp_path_factory):
    """open_clip's ``ViT-B-16`` architecture (nn.GELU), random weights, saved as a state dict."""
    torch.manual_seed(3)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    assert not isinstance(model.visual.transformer.resblocks[0].mlp.gelu,
                          open_clip.transformer.QuickGELU)
    with torch.no_grad():  # zero biases and unit LayerNorms would hide a wrong activation less well
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("open_clip_b16") / "ViT-B-16-gelu.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_gelu_backbone_matches_open_clip_vit_b16_at_224(open_clip_vit_b16):
    model, path = open_clip_vit_b16
    ours = create_backbone("ViT-B-16", pretrained=path, image_size=(224, 224), act="gelu").eval()
    torch.manual_seed(4)
    images = torch.randn(1, 3, 224, 224)
    ids = Tokenizer()(CAPTIONS[:2])
    with torch.no_grad():
        ref_image = model.encode_image(images, normalize=False)
        ref_text = model.encode_text(ids, normalize=False)
        image, text = ours.encode_image(images), ours.encode_text(ids)
        torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text, ref_text, atol=1e-5, rtol=1e-5)
        assert ref_image.abs().mean() > 0.05 and ref_text.abs().mean() > 0.05  # not trivial

        # The same weights in the default QuickGELU backbone load without a word, and are wrong.
        for tower in (ours.visual, ours.text):
            for block in tower.transformer.resblocks:
                block.mlp.gelu = QuickGELU()
        rel = ((ours.encode_image(images) - ref_image).norm() / ref_image.norm()).item()
    assert rel > 1e-3, rel


def test_act_is_a_checked_setting():
    with pytest.raises(ValueError, match="act must be one of"):
        create_backbone(SPEC, act="relu")
