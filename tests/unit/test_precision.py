"""fp32 from the normalised features on (method.md box "Precision"; issue: loss and evaluation numerics
under bf16 autocast). The encoders may run in bf16; the losses, the hard-negative sampling and the
retrieval similarity must not. Checked on the CPU with torch.autocast("cpu", dtype=torch.bfloat16),
which casts matmuls to bf16 just as CUDA autocast does."""

import pytest
import torch

from iclf.losses import (id_loss, intra_modal_loss, itc_loss, itm_loss, mlm_loss,
                         sample_hard_negatives, sdm_loss)
from iclf.metrics import cosine_similarity, evaluate_features

B, D = 64, 512  # the batch and width the issue measured at
REL = 1e-5


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def feats():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(B, D, generator=gen)
    text = image + 6.0 * torch.randn(B, D, generator=gen)  # matched pairs: cosine about 0.16
    pids = torch.randint(0, 20, (B,), generator=gen)
    return image, text, pids


def test_cpu_autocast_really_lowers_matmuls(feats):
    # the premise of every test below: without protection, the similarity would be bf16
    image, text, _ = feats
    with bf16_autocast():
        assert (image @ text.t()).dtype == torch.bfloat16


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = float(a.detach()), float(b.detach())
    assert b != 0
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("name", ["itc", "sdm", "intra"])
def test_similarity_losses_are_fp32_under_autocast(feats, name):
    image, text, pids = feats
    temp = torch.tensor(0.07, requires_grad=True)
    fns = {"itc": lambda i, t: itc_loss(i, t, 50.0),
           "sdm": lambda i, t: sdm_loss(i, t, pids, 50.0),
           "intra": lambda i, t: intra_modal_loss(i, t, pids, temp, alpha=0.4)}
    reference = fns[name](image, text)
    with bf16_autocast():
        value = fns[name](image, text)
        lowered = fns[name](image.bfloat16(), text.bfloat16())  # bf16 features: cast up inside
    assert value.dtype == torch.float32 and lowered.dtype == torch.float32
    assert _rel(value, reference) <= REL, (float(value), float(reference))
    assert _rel(lowered, fns[name](image.bfloat16().float(), text.bfloat16().float())) <= REL


def test_sdm_under_autocast_is_not_the_bf16_value(feats):
    # what the issue measured: the bf16 similarity moves SDM in the third digit
    image, text, pids = feats
    import torch.nn.functional as F

    with bf16_autocast():
        sim = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    assert sim.dtype == torch.bfloat16
    err = (sim.float() - F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()).abs().max()
    assert 50 * err > 1e-3  # a logit error the protected losses do not have


@pytest.mark.parametrize("name", ["mlm", "itm", "id"])
def test_logit_losses_are_fp32_under_autocast(name):
    gen = torch.Generator().manual_seed(1)
    if name == "mlm":
        logits, targets = torch.randn(40, 1000, generator=gen), torch.randint(1, 1000, (40,))
        fn = lambda x: mlm_loss(x, targets)  # noqa: E731
    elif name == "itm":
        logits = torch.randn(3 * B, 2, generator=gen)
        fn = itm_loss
    else:
        logits, pids = torch.randn(2 * B, 30, generator=gen), torch.randint(0, 30, (B,))
        fn = lambda x: id_loss(x[:B], x[B:], pids)  # noqa: E731
    logits = logits.bfloat16()  # what a head under autocast hands over
    reference = fn(logits.float())
    with bf16_autocast():
        value = fn(logits)
    assert value.dtype == torch.float32 and _rel(value, reference) <= REL


def test_hard_negative_sampling_is_fp32_under_autocast(feats):
    # bf16 similarities move the sampling weights by ~1e-3, which changes about one draw in a
    # thousand: 100 seeds x 2B draws must all agree with the fp32 draws.
    image, text, pids = feats
    temp = torch.tensor(0.07)
    for seed in range(100):
        want = sample_hard_negatives(image, text, pids, temp,
                                     generator=torch.Generator().manual_seed(seed))
        with bf16_autocast():
            got = sample_hard_negatives(image, text, pids, temp,
                                        generator=torch.Generator().manual_seed(seed))
        assert all(torch.equal(a, b) for a, b in zip(got, want)), seed


def test_objective_losses_are_fp32_from_the_features_the_encoders_gave():
    """The whole objective under autocast: every similarity loss equals its fp32 value computed
    outside autocast from the very features the (bf16) encoders returned."""
    from iclf.models.iclf import build_iclf_model
    from iclf.objective import Objective

    torch.manual_seed(0)
    model = build_iclf_model("tiny", None, (64, 32), num_classes=8, fusion_style="irra",
                             fusion_depth=1, fusion_heads=4, lora=None, need_mlm=False,
                             need_itm=True, need_id=True)
    seen = {}
    forward = model.forward

    def spy(images, ids):
        out = forward(images, ids)
        seen["feats"] = out
        return out

    model.forward = spy
    gen = torch.Generator().manual_seed(2)
    n = 16
    ids = torch.randint(1, 1000, (n, 77), generator=gen)
    ids[:, 0], ids[:, 20] = 49406, 49407
    ids[:, 21:] = 0
    batch = {"images": torch.randn(n, 3, 64, 32, generator=gen), "caption_ids": ids,
             "mlm_ids": ids, "mlm_labels": torch.zeros_like(ids),
             "pids": torch.arange(n) % 5}
    objective = Objective({"itc": 1.0, "sdm": 1.0, "itm": 1.0, "id": 1.0}, itm_ce_weight=0.5)
    with bf16_autocast():
        out = objective(model, batch, generator=torch.Generator().manual_seed(0))
    f = seen["feats"]
    assert f.image_tokens.dtype == torch.bfloat16  # the encoders did run in bf16
    img, txt = f.image_feat.detach(), f.text_feat.detach()
    pids = batch["pids"]
    assert _rel(out["itc"], itc_loss(img, txt, 50.0)) <= REL
    assert _rel(out["sdm"], sdm_loss(img, txt, pids, 50.0)) <= REL
    assert _rel(out["intra"], intra_modal_loss(img, txt, pids, model.temp, alpha=0.4)) <= REL
    assert all(v.dtype == torch.float32 for v in out.values())


def test_evaluation_similarity_is_fp32_under_autocast(feats):
    image, text, _ = feats
    reference = cosine_similarity(text, image)
    with bf16_autocast():
        sim = cosine_similarity(text, image)
        lowered = cosine_similarity(text.bfloat16(), image.bfloat16())
    assert sim.dtype == torch.float32 and lowered.dtype == torch.float32
    torch.testing.assert_close(sim, reference, rtol=REL, atol=1e-6)


def test_evaluation_metrics_are_unchanged_under_autocast(feats):
    image, text, pids = feats
    gallery_pids = pids
    reference = evaluate_features(text, image, pids, gallery_pids, chunk_size=7)
    with bf16_autocast():
        got = evaluate_features(text, image, pids, gallery_pids, chunk_size=7)
    assert got == reference


def test_extracted_evaluation_features_are_fp32_under_autocast(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from iclf.data.transforms import build_test_transform
    from iclf.engine.evaluate import extract_features
    from iclf.models.iclf import build_iclf_model
    from iclf.tokenizer import Tokenizer

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (32, 64), (40 * i, 100, 200 - 40 * i)).save(paths[-1])
    split = SimpleNamespace(image_paths=[str(p) for p in paths], image_pids=[0, 0, 1, 1],
                            captions=["a red coat", "a blue bag", "black shoes", "a hat"],
                            caption_pids=[0, 0, 1, 1])
    model = build_iclf_model("tiny", None, (64, 32), num_classes=2, fusion_style="irra",
                             fusion_depth=1, fusion_heads=4, lora=None, need_mlm=False,
                             need_itm=False, need_id=True)
    kwargs = dict(transform=build_test_transform((64, 32)), tokenizer=Tokenizer(), batch_size=2,
                  device=torch.device("cpu"))
    with bf16_autocast():
        txt, img = extract_features(model, split, **kwargs)
    assert txt.dtype == img.dtype == torch.float32
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
