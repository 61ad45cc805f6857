"""Loss functions against hand computations and direct slow implementations (method.md 2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from iclf.losses import (
    id_loss,
    intra_modal_loss,
    itc_loss,
    itm_labels,
    itm_loss,
    mlm_loss,
    negative_pairs,
    sample_hard_negatives,
    sdm_loss,
)

LOG_EPS = math.log(1e-8)  # -18.420680743952367


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_itc_two_by_two_by_hand() -> None:
    image = torch.tensor([[3.0, 0.0], [0.0, 0.5]])  # normalised inside: e1, e2
    text = torch.tensor([[2.0, 0.0], [1.2, 1.6]])  # normalised: e1, (0.6, 0.8)
    # logits = 2 * i t^T = [[2, 1.2], [0, 1.6]]
    i2t = [_softplus(1.2 - 2.0), _softplus(0.0 - 1.6)]
    t2i = [_softplus(0.0 - 2.0), _softplus(1.2 - 1.6)]
    expected = 0.5 * (sum(i2t) / 2 + sum(t2i) / 2)
    assert itc_loss(image, text, logit_scale=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_itc_is_not_identity_aware_and_checks_shapes() -> None:
    feats = torch.eye(3)
    assert itc_loss(feats, feats, 50.0).item() < 1e-6
    with pytest.raises(ValueError, match="same shape"):
        itc_loss(torch.ones(3, 4), torch.ones(2, 4), 50.0)


def _sdm_by_hand(sim: list[list[float]], pids: list[int], scale: float) -> float:
    """method.md 2.2 written out element by element."""
    size = len(pids)
    total = 0.0
    for matrix in (sim, [list(col) for col in zip(*sim)]):
        direction = 0.0
        for a in range(size):
            exps = [math.exp(scale * matrix[a][b]) for b in range(size)]
            probs = [e / sum(exps) for e in exps]
            same = [1.0 if pids[a] == pids[b] else 0.0 for b in range(size)]
            q = [s / sum(same) for s in same]
            direction += sum(
                p * (math.log(p) - math.log(qb + 1e-8)) for p, qb in zip(probs, q)
            )
        total += direction / size  # mean over rows, directions summed
    return total


def test_sdm_three_by_three_distinct_pids_by_hand() -> None:
    image = torch.eye(3)
    text = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    pids = torch.tensor([4, 7, 9])
    scale = 5.0
    sim = (image @ text.t()).tolist()
    # Distinct pids: q is one-hot, so each row gives sum_b P log P - 18.42 (1 - P_diag).
    expected = 0.0
    for matrix in (sim, [list(col) for col in zip(*sim)]):
        rows = []
        for a in range(3):
            exps = [math.exp(scale * v) for v in matrix[a]]
            probs = [e / sum(exps) for e in exps]
            entropy_term = sum(p * math.log(p) for p in probs)
            rows.append(entropy_term - LOG_EPS * (1.0 - probs[a]) - probs[a] * math.log1p(1e-8))
        expected += sum(rows) / 3
    got = sdm_loss(image, text, pids, logit_scale=scale).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(_sdm_by_hand(sim, [4, 7, 9], scale), rel=1e-5)


def test_sdm_shared_pids_matches_slow_implementation() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(5, 8, generator=gen)
    text = torch.randn(5, 8, generator=gen)
    pids = [0, 0, 1, 2, 1]
    sim = (F.normalize(image, dim=1) @ F.normalize(text, dim=1).t()).double().tolist()
    got = sdm_loss(image, text, torch.tensor(pids), logit_scale=10.0).item()
    assert got == pytest.approx(_sdm_by_hand(sim, pids, 10.0), rel=1e-5)
    # a perfectly matching identity-level distribution gives (almost) zero loss
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert sdm_loss(feats, feats, torch.tensor([3, 3, 5]), 200.0).item() < 1e-5


def test_mlm_uses_masked_positions_only() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 11, generator=gen)
    labels = torch.zeros(2, 6, dtype=torch.long)
    labels[0, 1], labels[0, 4], labels[1, 2] = 5, 3, 9
    mask = labels != 0
    value = mlm_loss(logits[mask], labels[mask])
    reference = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=0)
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)
    changed = logits.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 11, generator=gen) * 10
    assert mlm_loss(changed[mask], labels[mask]).item() == pytest.approx(value.item(), rel=1e-6)
    with pytest.raises(ValueError, match="no masked positions"):
        mlm_loss(torch.zeros(0, 11), torch.zeros(0, dtype=torch.long))


def test_id_loss_by_hand() -> None:
    logits_img = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits_txt = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    pids = torch.tensor([0, 2])
    ce_img = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(1 / (2 + math.e))) / 2
    ce_txt = (-math.log(1 / 3) - math.log(math.exp(3) / (2 * math.e + math.exp(3)))) / 2
    assert id_loss(logits_img, logits_txt, pids).item() == pytest.approx(
        0.5 * (ce_img + ce_txt), rel=1e-6
    )


def test_itm_label_layout_and_loss() -> None:
    assert itm_labels(3).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    logits = torch.tensor([[0.0, 2.0]] * 2 + [[1.0, 0.0]] * 4)
    expected = (2 * _softplus(-2.0) + 4 * _softplus(-1.0)) / 6
    assert itm_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"\[3B, 2\]"):
        itm_loss(torch.zeros(4, 2))


def test_negative_pairs_layout() -> None:
    text = torch.arange(3).view(3, 1, 1).float()
    image = 10 + torch.arange(3).view(3, 1, 1).float()
    texts, images = negative_pairs(text, image, torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0]))
    assert texts.flatten().tolist() == [0, 1, 2, 1, 2, 0]
    assert images.flatten().tolist() == [12, 10, 11, 10, 11, 12]


def test_hard_negatives_never_share_identity() -> None:
    gen = torch.Generator().manual_seed(2)
    pids = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    image = torch.randn(8, 16, generator=gen)
    text = image + 0.1 * torch.randn(8, 16, generator=gen)  # same-identity items look alike
    for _ in range(300):
        neg_image, neg_text = sample_hard_negatives(image, text, pids, 0.07, generator=gen)
        assert neg_image.shape == neg_text.shape == (8,)
        assert not bool((pids[neg_image] == pids).any())
        assert not bool((pids[neg_text] == pids).any())


def test_hard_negatives_prefer_similar_items() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.0]])
    text = image.clone()
    pids = torch.tensor([0, 1, 2, 3])
    gen = torch.Generator().manual_seed(3)
    draws = torch.stack(
        [sample_hard_negatives(image, text, pids, 0.07, generator=gen)[0] for _ in range(200)]
    )
    assert (draws[:, 0] == 2).float().mean() > 0.9  # text 0's hardest other image is image 2


def test_hard_negatives_deterministic_with_generator() -> None:
    feats = torch.randn(6, 4, generator=torch.Generator().manual_seed(4))
    pids = torch.tensor([0, 1, 2, 0, 1, 2])
    a = sample_hard_negatives(feats, feats, pids, 0.5, generator=torch.Generator().manual_seed(9))
    b = sample_hard_negatives(feats, feats, pids, 0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_hard_negatives_single_identity_batch_falls_back() -> None:
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(4, 8, generator=gen)
    pids = torch.full((4,), 7)
    for _ in range(50):
        neg_image, neg_text = sample_hard_negatives(feats, feats, pids, 0.07, generator=gen)
        arange = torch.arange(4)
        assert not bool((neg_image == arange).any()) and not bool((neg_text == arange).any())
    one = sample_hard_negatives(feats[:1], feats[:1], pids[:1], torch.tensor(0.07))
    assert one[0].tolist() == [0] and one[1].tolist() == [0]


def test_hard_negatives_have_no_grad() -> None:
    feats = torch.randn(4, 8, requires_grad=True)
    temp = torch.nn.Parameter(torch.tensor(0.07))
    neg_image, neg_text = sample_hard_negatives(feats, feats, torch.arange(4), temp)
    assert not neg_image.requires_grad and not neg_text.requires_grad


def _intra_slow(image: torch.Tensor, text: torch.Tensor, pids: list[int], temp: torch.Tensor,
                alpha: float) -> torch.Tensor:
    """method.md 2.5 with explicit loops; targets detached by hand."""
    size = len(pids)
    total = []
    for feats in (F.normalize(image, dim=1), F.normalize(text, dim=1)):
        rows = []
        for a in range(size):
            logits = torch.stack([feats[a] @ feats[b] / temp for b in range(size)])
            log_p = logits - torch.logsumexp(logits, 0)
            count = sum(1 for b in range(size) if pids[a] == pids[b])
            y = torch.tensor([1.0 / count if pids[a] == pids[b] else 0.0 for b in range(size)])
            target = alpha * log_p.detach().exp() + (1 - alpha) * y
            rows.append(-(target * log_p).sum())
        total.append(torch.stack(rows).mean())
    return 0.5 * (total[0] + total[1])


def test_intra_modal_matches_slow_implementation_and_grads() -> None:
    gen = torch.Generator().manual_seed(6)
    image = torch.randn(5, 8, generator=gen, requires_grad=True)
    text = torch.randn(5, 8, generator=gen, requires_grad=True)
    pids = [0, 1, 0, 2, 1]
    temp = torch.nn.Parameter(torch.tensor(0.3))
    fast = intra_modal_loss(image, text, torch.tensor(pids), temp, alpha=0.4)
    grads_fast = torch.autograd.grad(fast, (image, text, temp))
    slow = _intra_slow(image, text, pids, temp, 0.4)
    grads_slow = torch.autograd.grad(slow, (image, text, temp))
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    for g_fast, g_slow in zip(grads_fast, grads_slow):
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-4, atol=1e-6)
    assert grads_fast[2].abs().item() > 0  # gradient reaches the temperature
    assert grads_fast[0].abs().sum() > 0 and grads_fast[1].abs().sum() > 0


def test_intra_modal_alpha_changes_value() -> None:
    gen = torch.Generator().manual_seed(7)
    image, text = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    pids = torch.tensor([0, 0, 1, 2])
    a = intra_modal_loss(image, text, pids, 0.1, alpha=0.4)
    b = intra_modal_loss(image, text, pids, 0.1, alpha=0.0)
    assert a.item() != pytest.approx(b.item())
    with pytest.raises(ValueError, match="alpha"):
        intra_modal_loss(image, text, pids, 0.1, alpha=1.5)
