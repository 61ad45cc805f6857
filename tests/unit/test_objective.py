"""Objective: loss entries, skipped passes, and that every knob changes the total (method.md 2)."""

from __future__ import annotations

import pytest
import torch

from iclf.data.masking import mask_tokens
from iclf.models import BackboneSpec, Fusion, ICLFModel, create_backbone
from iclf.models.heads import IDClassifier, ITMHead, MLMHead
from iclf.objective import LOSS_NAMES, Objective
from iclf.tokenizer import Tokenizer

WIDTH = 32
ALL_ON = {"itc": 1.0, "sdm": 1.0, "mlm": 1.0, "itm": 1.0, "id": 1.0}
CAPTIONS = [
    "a woman in a red coat carrying a black bag",
    "the man wears blue jeans and white shoes",
    "a person with a green backpack and grey trousers",
    "she has long hair and a yellow dress",
]


def _spec() -> BackboneSpec:
    return BackboneSpec(embed_dim=WIDTH, vision_width=WIDTH, vision_layers=1, vision_heads=2,
                        patch_size=16, text_width=WIDTH, text_layers=1, text_heads=2,
                        image_size=(32, 16))


def _model(fusion: bool = True, seed: int = 0) -> ICLFModel:
    torch.manual_seed(seed)
    backbone = create_backbone(_spec())
    if not fusion:
        return ICLFModel(backbone, classifier=IDClassifier(WIDTH, 3))
    return ICLFModel(
        backbone,
        fusion=Fusion("irra", 1, WIDTH, 2),
        mlm_head=MLMHead(WIDTH, backbone.vocab_size),
        itm_head=ITMHead(WIDTH),
        classifier=IDClassifier(WIDTH, 3),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids thread wake-up costs on the shared 2-core host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


def _batch(tokenizer: Tokenizer, mask_global_text: bool = True) -> dict[str, torch.Tensor]:
    """A training batch as the data layer builds it (design.md), with real tokens and masking."""
    gen = torch.Generator().manual_seed(0)
    clean = tokenizer(CAPTIONS)
    masked, labels = zip(*(mask_tokens(row, gen, rate=0.3) for row in clean))
    mlm_ids = torch.stack(masked)
    return {
        "images": torch.randn(4, 3, 32, 16, generator=gen),
        "caption_ids": mlm_ids.clone() if mask_global_text else clean,
        "mlm_ids": mlm_ids,
        "mlm_labels": torch.stack(labels),
        "pids": torch.tensor([0, 0, 1, 2]),
        "image_ids": torch.tensor([0, 1, 2, 3]),
    }


def _run(objective: Objective, model: ICLFModel, batch: dict) -> dict[str, torch.Tensor]:
    return objective(model, batch, generator=torch.Generator().manual_seed(5))


def _total(objective: Objective, model: ICLFModel, batch: dict) -> float:
    return float(_run(objective, model, batch)["loss"].detach())


def test_entries_and_weighted_total(tokenizer: Tokenizer) -> None:
    weights = {"itc": 1.0, "sdm": 0.5, "mlm": 2.0, "itm": 1.5, "id": 0.25}
    out = _run(Objective(weights), _model(), _batch(tokenizer))
    assert set(out) == {"itc", "sdm", "mlm", "itm", "itm_ce", "intra", "id", "loss"}
    expected = sum(weights[name] * out[name] for name in LOSS_NAMES)
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["itm"], 0.9 * out["itm_ce"] + 0.1 * out["intra"])
    assert all(torch.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_weight_zero_drops_the_entry_and_each_weight_counts(tokenizer: Tokenizer,
                                                            name: str) -> None:
    model, batch = _model(), _batch(tokenizer)
    base = _total(Objective(ALL_ON), model, batch)
    doubled = _total(Objective({**ALL_ON, name: 2.0}), model, batch)
    assert doubled != pytest.approx(base, rel=1e-6)
    out = _run(Objective({**ALL_ON, name: 0.0}), model, batch)
    assert name not in out
    if name == "itm":
        assert "itm_ce" not in out and "intra" not in out


def _count_calls(model: ICLFModel, names: tuple[str, ...]) -> dict[str, int]:
    counts = {name: 0 for name in names}
    for name in names:
        original = getattr(model, name)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        setattr(model, name, wrapper)
    return counts


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (ALL_ON, {"fuse": 3, "itm_logits": 2, "mlm_logits": 1, "encode_text_tokens": 1}),
        ({**ALL_ON, "mlm": 0.0}, {"fuse": 2, "itm_logits": 2, "mlm_logits": 0}),
        ({**ALL_ON, "itm": 0.0}, {"fuse": 1, "itm_logits": 0, "mlm_logits": 1}),
        ({"itc": 1.0, "id": 1.0}, {"fuse": 0, "itm_logits": 0, "mlm_logits": 0}),
        ({"mlm": 1.0}, {"fuse": 1, "encode_text_tokens": 1, "id_logits": 0}),
    ],
)
def test_unneeded_forward_passes_are_skipped(tokenizer: Tokenizer, weights: dict,
                                             expected: dict) -> None:
    model = _model()
    names = ("fuse", "itm_logits", "mlm_logits", "encode_text_tokens", "id_logits")
    counts = _count_calls(model, names)
    _run(Objective(weights), model, _batch(tokenizer))
    for name, value in expected.items():
        assert counts[name] == value, name


def test_mask_global_text_switches_the_text_passes(tokenizer: Tokenizer) -> None:
    model = _model()
    counts = _count_calls(model, ("encode_text_tokens",))
    masked = _total(Objective(ALL_ON, mask_global_text=True), model, _batch(tokenizer, True))
    assert counts["encode_text_tokens"] == 1  # one text pass serves the global losses and MLM
    clean = _total(Objective(ALL_ON, mask_global_text=False), model, _batch(tokenizer, False))
    assert counts["encode_text_tokens"] == 3  # plus a second pass on mlm_ids
    assert clean != pytest.approx(masked, rel=1e-6)
    # The same (masked) batch through both settings gives the same MLM value either way.
    batch = _batch(tokenizer, True)
    a = _run(Objective({"mlm": 1.0}, mask_global_text=True), model, batch)["mlm"]
    b = _run(Objective({"mlm": 1.0, "itc": 1.0}, mask_global_text=False), model, batch)["mlm"]
    torch.testing.assert_close(a, b)


def test_mask_global_text_true_refuses_unmasked_captions(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="mask_global_text=True"):
        _run(Objective(ALL_ON, mask_global_text=True), _model(), _batch(tokenizer, False))


def test_temperature_matters_exactly_when_itm_is_on(tokenizer: Tokenizer) -> None:
    model, batch = _model(), _batch(tokenizer)
    for weights, should_change in ((ALL_ON, True), ({**ALL_ON, "itm": 0.0}, False)):
        objective = Objective(weights)
        with torch.no_grad():
            model.temp.fill_(0.07)
        before = _total(objective, model, batch)
        with torch.no_grad():
            model.temp.fill_(0.5)
        after = _total(objective, model, batch)
        assert (after != pytest.approx(before, rel=1e-6)) == should_change


@pytest.mark.parametrize(
    ("knob", "value"),
    [("itm_ce_weight", 0.5), ("intra_alpha", 0.0), ("logit_scale", 10.0)],
)
def test_every_setting_changes_the_total(tokenizer: Tokenizer, knob: str, value: float) -> None:
    model, batch = _model(), _batch(tokenizer)
    base = _total(Objective(ALL_ON), model, batch)
    assert _total(Objective(ALL_ON, **{knob: value}), model, batch) != pytest.approx(
        base, rel=1e-6
    )


def test_itm_parts_at_the_ends_of_itm_ce_weight(tokenizer: Tokenizer) -> None:
    model, batch = _model(), _batch(tokenizer)
    only_ce = _run(Objective({"itm": 1.0}, itm_ce_weight=1.0), model, batch)
    only_intra = _run(Objective({"itm": 1.0}, itm_ce_weight=0.0), model, batch)
    assert "intra" not in only_ce and "itm_ce" not in only_intra
    torch.testing.assert_close(only_ce["itm"], only_ce["itm_ce"])
    torch.testing.assert_close(only_intra["itm"], only_intra["intra"])


def test_gradients_reach_backbone_fusion_heads_and_temp(tokenizer: Tokenizer) -> None:
    model = _model()
    _run(Objective(ALL_ON), model, _batch(tokenizer))["loss"].backward()
    for module in (model.backbone, model.fusion, model.mlm_head, model.itm_head,
                   model.classifier):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert model.temp.grad is not None and model.temp.grad.abs() > 0


def test_sampling_is_reproducible_with_a_generator(tokenizer: Tokenizer) -> None:
    model, batch = _model(), _batch(tokenizer)
    objective = Objective({"itm": 1.0}, itm_ce_weight=1.0)
    assert _total(objective, model, batch) == _total(objective, model, batch)


def test_bad_settings_raise(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="unknown loss names"):
        Objective({"itc": 1.0, "triplet": 1.0})
    with pytest.raises(ValueError, match="'id'.*>= 0"):
        Objective({"itc": 1.0, "id": -0.5})
    with pytest.raises(ValueError, match="every loss weight is 0"):
        Objective({"itc": 0.0})
    with pytest.raises(ValueError, match="itm_ce_weight"):
        Objective(ALL_ON, itm_ce_weight=1.5)
    with pytest.raises(ValueError, match="logit_scale"):
        Objective(ALL_ON, logit_scale=0.0)
    no_fusion = _model(fusion=False)
    for name in ("mlm", "itm"):
        with pytest.raises(ValueError, match=rf"the {name.upper()} loss needs the fusion module"):
            _run(Objective({"itc": 1.0, name: 1.0}), no_fusion, _batch(tokenizer))
    out = _run(Objective({"itc": 1.0, "sdm": 1.0, "id": 1.0}), no_fusion, _batch(tokenizer))
    assert set(out) == {"itc", "sdm", "id", "loss"}
    batch = _batch(tokenizer)
    del batch["mlm_labels"]
    with pytest.raises(ValueError, match="missing keys.*mlm_labels"):
        _run(Objective(ALL_ON), _model(), batch)
