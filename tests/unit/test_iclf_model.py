"""ICLFModel and build_iclf_model on the tiny backbone (docs/design.md "Model and objective")."""

import pytest
import torch
from torch import nn

from iclf.models import create_backbone
from iclf.models.fusion import Fusion
from iclf.models.heads import IDClassifier, ITMHead, MLMHead
from iclf.models.iclf import Features, ICLFModel, build_iclf_model
from iclf.models.lora import LoraSettings, adapter_parameters, count_trainable
from iclf.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE

H, W = 384, 128
B = 2


def _ids(b: int = B, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(b, 77, dtype=torch.long)
    for i in range(b):
        n = 5 + 3 * i
        ids[i, 0] = SOT_ID
        ids[i, 1 : n + 1] = torch.randint(1, 40000, (n,), generator=g)
        ids[i, n + 1] = EOT_ID
    return ids


def _images(b: int = B, seed: int = 0, size=(H, W)) -> torch.Tensor:
    return torch.randn(b, 3, *size, generator=torch.Generator().manual_seed(seed))


def _build(style="irra", depth=1, heads=4, lora=None, mlm=True, itm=True, ident=True, seed=0,
           image_size=(H, W)):
    torch.manual_seed(seed)
    return build_iclf_model(
        backbone_name="tiny", pretrained=None, image_size=image_size, num_classes=7,
        fusion_style=style, fusion_depth=depth, fusion_heads=heads, lora=lora, need_mlm=mlm,
        need_itm=itm, need_id=ident, temp_init=0.07, pos_interp="bilinear", stride=None,
    )


@pytest.fixture(scope="module")
def model():
    return _build().eval()


def test_shapes_at_384x128(model):
    images, ids = _images(), _ids()
    with torch.no_grad():
        feats = model(images, ids)
        assert isinstance(feats, Features)
        d = model.backbone.embed_dim
        n = (H // 16) * (W // 16) + 1
        assert feats.image_tokens.shape == (B, n, d)
        assert feats.text_tokens.shape == (B, 77, d)
        assert feats.image_feat.shape == feats.text_feat.shape == (B, d)
        assert torch.equal(feats.image_feat, feats.image_tokens[:, 0])
        eot = ids.argmax(-1)
        assert torch.equal(feats.text_feat[1], feats.text_tokens[1, eot[1]])
        assert torch.equal(feats.image_feat, model.encode_image(images))
        assert torch.equal(feats.text_feat, model.encode_text(ids))
        assert torch.equal(feats.text_tokens, model.encode_text_tokens(ids))

        fused = model.fuse(feats.text_tokens, feats.image_tokens)
        assert fused.shape == (B, 77, d)
        assert model.itm_logits(feats.text_tokens, feats.image_tokens).shape == (B, 2)
        assert model.id_logits(feats.image_feat).shape == (B, 7)
        mask = torch.zeros(B, 77, dtype=torch.bool)
        mask[0, 2], mask[1, 3], mask[1, 5] = True, True, True
        assert model.mlm_logits(fused, mask).shape == (3, VOCAB_SIZE)


def test_mlm_logits_equal_full_head_indexed(model):
    torch.manual_seed(0)
    fused = torch.randn(B, 77, model.backbone.embed_dim)
    mask = torch.rand(B, 77) < 0.15
    mask[0, 1] = True
    with torch.no_grad():
        full = model.mlm_head(fused)  # (B, L, V): fine at this tiny size
        assert torch.allclose(model.mlm_logits(fused, mask), full[mask], atol=1e-5)
    with pytest.raises(ValueError, match="bool"):
        model.mlm_logits(fused, mask.long())


def test_itm_logits_use_fused_position_zero(model):
    feats = model(_images(), _ids())
    with torch.no_grad():
        fused = model.fuse(feats.text_tokens, feats.image_tokens)
        expected = model.itm_head(fused[:, 0])
        assert torch.allclose(model.itm_logits(feats.text_tokens, feats.image_tokens), expected)


@pytest.mark.parametrize("knob, values", [("depth", (1, 2)), ("style", ("irra", "interlaced")),
                                          ("style", ("interlaced", "bidirectional")),
                                          ("heads", (2, 4))])
def test_fusion_knobs_change_the_output(knob, values):
    """No dead knob: the fused tokens, MLM and ITM logits change with depth, style and heads."""
    images, ids = _images(size=(128, 64)), _ids()
    logits, image_feats = [], []
    for value in values:
        model = _build(**{knob: value}, image_size=(128, 64)).eval()
        with torch.no_grad():
            feats = model(images, ids)
            logits.append(model.itm_logits(feats.text_tokens, feats.image_tokens))
            image_feats.append(feats.image_feat)
    # the backbone is seeded identically, so only the fusion module differs
    assert torch.equal(image_feats[0], image_feats[1])
    assert not torch.allclose(logits[0], logits[1])


def test_temp_is_a_parameter_that_changes_no_forward_output(model):
    assert isinstance(model.temp, nn.Parameter) and model.temp.requires_grad
    assert model.temp.item() == pytest.approx(0.07)
    images, ids = _images(), _ids()
    with torch.no_grad():
        before = model(images, ids)
        fused_before = model.fuse(before.text_tokens, before.image_tokens)
        model.temp.fill_(3.0)
        after = model(images, ids)
        fused_after = model.fuse(after.text_tokens, after.image_tokens)
        model.temp.fill_(0.07)
    assert torch.equal(before.image_feat, after.image_feat)
    assert torch.equal(before.text_feat, after.text_feat)
    assert torch.equal(fused_before, fused_after)
    assert any(p is model.temp for p in model.new_parameters())
    assert _build(image_size=(128, 64)).temp.item() == pytest.approx(0.07)


def test_new_modules_and_param_handles(model):
    mods = model.new_modules()
    assert mods == [model.fusion, model.mlm_head, model.itm_head, model.classifier]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    new_ids = {id(p) for p in model.new_parameters()}
    assert not backbone_ids & new_ids
    assert backbone_ids | new_ids == {id(p) for p in model.parameters()}
    assert model.trainable_parameter_count() == sum(p.numel() for p in model.parameters())


def test_lora_freezes_backbone_but_new_modules_train():
    lora = LoraSettings(rank=4, targets={"vision": ["q", "v"], "text": ["q", "v"]})
    model = _build(lora=lora, image_size=(128, 64))
    new = sum(p.numel() for p in model.new_parameters())
    adapters = sum(p.numel() for p in adapter_parameters(model.backbone))
    assert adapters == 2 * 3 * 2 * 4 * 256
    assert model.trainable_parameter_count() == new + adapters == count_trainable(model)
    assert all(p.requires_grad for p in model.new_parameters())
    # rank 0 and None are full fine-tuning
    for full in (None, LoraSettings(rank=0)):
        m = _build(lora=full, image_size=(128, 64))
        assert m.trainable_parameter_count() == sum(p.numel() for p in m.parameters())


def test_builder_builds_only_what_is_needed():
    m = _build(mlm=False, itm=False, ident=False, image_size=(128, 64))
    assert m.fusion is None and m.mlm_head is None and m.itm_head is None and m.classifier is None
    assert m.new_modules() == []
    feats = m(_images(size=(128, 64)), _ids())
    with pytest.raises(RuntimeError, match="fusion"):
        m.fuse(feats.text_tokens, feats.image_tokens)
    with pytest.raises(RuntimeError, match="ID classifier"):
        m.id_logits(feats.image_feat)
    m = _build(mlm=False, itm=True, ident=False, image_size=(128, 64))
    assert isinstance(m.fusion, Fusion) and isinstance(m.itm_head, ITMHead) and m.mlm_head is None
    with pytest.raises(RuntimeError, match="MLM head"):
        m.mlm_logits(torch.zeros(1, 77, 128), torch.zeros(1, 77, dtype=torch.bool))
    with pytest.raises(ValueError, match="fusion depth is 0"):
        _build(depth=0, mlm=True, itm=False, image_size=(128, 64))
    with pytest.raises(ValueError, match="divide"):
        _build(heads=3, image_size=(128, 64))


def test_constructor_checks():
    backbone = create_backbone("tiny")
    with pytest.raises(ValueError, match="fusion module"):
        ICLFModel(backbone, fusion=None, mlm_head=MLMHead(128, 10))
    with pytest.raises(ValueError, match="temp_init"):
        ICLFModel(backbone, temp_init=0.0)
    m = ICLFModel(backbone, classifier=IDClassifier(128, 3), temp_init=0.5)
    assert m.temp.item() == pytest.approx(0.5)


def test_backward_reaches_every_trainable_parameter():
    model = _build(image_size=(128, 64)).train()
    images, ids = _images(size=(128, 64)), _ids()
    feats = model(images, ids)
    fused = model.fuse(feats.text_tokens, feats.image_tokens)
    mask = torch.zeros(B, 77, dtype=torch.bool)
    mask[:, 1] = True
    loss = (
        model.mlm_logits(fused, mask).logsumexp(-1).sum()
        + model.itm_logits(feats.text_tokens, feats.image_tokens).square().sum()
        + model.id_logits(feats.image_feat).square().sum()
        + model.temp
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # token rows of ids absent from the batch get zero (not None) gradients; nothing is missing
    assert missing == []
