"""MLM masking statistics and edge cases (method.md 2.3), with the real tokenizer."""

from __future__ import annotations

import pytest
import torch

from iclf.data.masking import mask_tokens
from iclf.tokenizer import EOT_ID, MASK_ID, SOT_ID, Tokenizer

CAPTIONS = [
    "A man with short black hair wears a red t-shirt with stripes, blue jeans and white shoes.",
    "The woman is carrying a pink handbag and wears a long grey coat over a black skirt.",
    "A young man in a green hooded sweatshirt, dark trousers and brown boots walks forward.",
    "She has long blonde hair and a yellow backpack; her sneakers are white.",
]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return Tokenizer()(CAPTIONS)


def run(ids: torch.Tensor, repeats: int, seed: int = 0, **kw) -> tuple[torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    originals, masked, labels = [], [], []
    for _ in range(repeats):
        for row in ids:
            m, lab = mask_tokens(row, g, **kw)
            originals.append(row)
            masked.append(m)
            labels.append(lab)
    return torch.stack(originals), torch.stack(masked), torch.stack(labels)


def test_rate_and_80_10_10_split(ids):
    original, masked, labels = run(ids, repeats=1500)
    real = (original > 0) & (original < MASK_ID)
    selected = labels != 0
    assert not (selected & ~real).any()
    # the forced mask adds a little on top of 0.15; captions here have ~20+ tokens
    rate = selected.sum().item() / real.sum().item()
    assert 0.145 < rate < 0.16
    assert torch.equal(labels[selected], original[selected])
    n = selected.sum().item()
    as_mask = (masked[selected] == MASK_ID).sum().item() / n
    kept = (masked[selected] == original[selected]).sum().item() / n
    randomised = 1 - as_mask - kept
    assert abs(as_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.015  # a random id equal to the original is ~never drawn
    assert abs(randomised - 0.1) < 0.015
    rand = masked[selected & (masked != MASK_ID) & (masked != original)]
    assert rand.min() >= 1 and rand.max() <= MASK_ID - 1
    assert torch.equal(masked[~selected], original[~selected])


def test_rates_are_live_settings(ids):
    original, masked, labels = run(ids, repeats=600, rate=0.4, mask_prob=0.5, random_prob=0.3)
    real = (original > 0) & (original < MASK_ID)
    selected = labels != 0
    assert abs(selected.sum().item() / real.sum().item() - 0.4) < 0.02
    n = selected.sum().item()
    assert abs((masked[selected] == MASK_ID).sum().item() / n - 0.5) < 0.025
    assert abs((masked[selected] == original[selected]).sum().item() / n - 0.2) < 0.025


def test_specials_and_padding_never_masked(ids):
    original, masked, labels = run(ids, repeats=300, rate=1.0)
    special = (original == SOT_ID) | (original == EOT_ID) | (original == 0)
    assert torch.equal(masked[special], original[special])
    assert (labels[special] == 0).all()
    assert (labels[~special] != 0).all()  # rate 1 selects every real token


def test_forced_mask_at_position_1_when_nothing_selected(ids):
    g = torch.Generator().manual_seed(0)
    for row in ids:
        masked, labels = mask_tokens(row, g, rate=0.0)
        assert masked[1] == MASK_ID and labels[1] == row[1]
        assert (labels != 0).sum() == 1
        assert torch.equal(masked[2:], row[2:]) and masked[0] == SOT_ID


def test_input_not_modified_and_deterministic_under_a_seed(ids):
    row = ids[0].clone()
    a = mask_tokens(row, torch.Generator().manual_seed(7))
    b = mask_tokens(row, torch.Generator().manual_seed(7))
    assert torch.equal(row, ids[0])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [mask_tokens(row, torch.Generator().manual_seed(s))[1] for s in range(8, 16)]
    assert any(not torch.equal(a[1], o) for o in others)


@pytest.mark.parametrize("kw", [dict(rate=1.5), dict(rate=-0.1), dict(mask_prob=1.2),
                                dict(mask_prob=0.8, random_prob=0.3), dict(random_prob=-0.1)])
def test_invalid_probabilities_refused(ids, kw):
    with pytest.raises(ValueError):
        mask_tokens(ids[0], torch.Generator(), **kw)


def test_one_caption_at_a_time(ids):
    with pytest.raises(ValueError, match="one caption"):
        mask_tokens(ids, torch.Generator())
