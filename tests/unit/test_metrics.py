"""Retrieval metrics (method.md 5): the toy case, a direct per-query reference, chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iclf.metrics import evaluate_features, retrieval_metrics


def _reference(sim: torch.Tensor, query_pids: list[int], gallery_pids: list[int]) -> dict:
    """Direct per-query implementation of method.md 5 with a full sort of each row.

    Ties are broken in favour of relevant items (the documented convention)."""
    r1 = r5 = r10 = ap_sum = inp_sum = 0.0
    for n, row in enumerate(sim.tolist()):
        order = sorted(range(len(row)), key=lambda m: (-row[m], gallery_pids[m] != query_pids[n]))
        rel = [1 if gallery_pids[m] == query_pids[n] else 0 for m in order]
        total = sum(rel)
        first = rel.index(1) + 1
        r1 += first <= 1
        r5 += first <= 5
        r10 += first <= 10
        seen, ap = 0, 0.0
        for k, r in enumerate(rel, start=1):
            if r:
                seen += 1
                ap += seen / k
                last = k
        ap_sum += ap / total
        inp_sum += total / last
    q = len(query_pids)
    return {"R1": 100 * r1 / q, "R5": 100 * r5 / q, "R10": 100 * r10 / q,
            "mAP": 100 * ap_sum / q, "mINP": 100 * inp_sum / q}


def test_toy_case_of_method_section_5() -> None:
    sim = torch.tensor([[0.90, 0.80, 0.30, 0.95, 0.10], [0.1, 0.7, 0.2, 0.3, 0.0]])
    out = retrieval_metrics(sim, torch.tensor([1, 2]), torch.tensor([1, 2, 1, 3, 1]))
    assert out["R1"] == pytest.approx(50.0)
    assert out["R5"] == pytest.approx(100.0)
    assert out["R10"] == pytest.approx(100.0)  # gallery of 5: computed with what exists
    assert out["mAP"] == pytest.approx(76.667, abs=1e-3)
    assert out["mINP"] == pytest.approx(80.0)
    assert set(out) == {"R1", "R5", "R10", "mAP", "mINP"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_direct_reference_on_random_data(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    num_q, num_g = 37, 53
    gallery_pids = torch.randint(0, 9, (num_g,), generator=gen)
    query_pids = gallery_pids[torch.randint(0, num_g, (num_q,), generator=gen)]
    # distinct scores per row (ties absent), with a pull towards the relevant items
    sim = torch.stack([torch.randperm(num_g, generator=gen) for _ in range(num_q)]).double()
    sim = sim + 20.5 * (query_pids[:, None] == gallery_pids[None, :])
    got = retrieval_metrics(sim, query_pids, gallery_pids, chunk_size=8)
    want = _reference(sim, query_pids.tolist(), gallery_pids.tolist())
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


def test_ties_follow_the_documented_convention() -> None:
    gen = torch.Generator().manual_seed(5)
    gallery_pids = torch.randint(0, 4, (25,), generator=gen)
    query_pids = gallery_pids[torch.randint(0, 25, (30,), generator=gen)]
    sim = torch.randint(0, 4, (30, 25), generator=gen).float()  # many ties of every kind
    got = retrieval_metrics(sim, query_pids, gallery_pids, chunk_size=7)
    want = _reference(sim, query_pids.tolist(), gallery_pids.tolist())
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_and_non_contiguous_input(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    gallery_pids = torch.arange(12) % 5
    query_pids = torch.arange(20) % 5
    # distinct multiples of 1/16, exact in every dtype here
    sim = torch.stack([torch.randperm(12, generator=gen) for _ in range(20)]).double() / 16
    want = _reference(sim, query_pids.tolist(), gallery_pids.tolist())
    as_columns = sim.to(dtype).t().contiguous().t()  # same values, column-major storage
    got = retrieval_metrics(as_columns, query_pids.int(), gallery_pids, chunk_size=3)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key


def test_chunk_size_does_not_change_results() -> None:
    gen = torch.Generator().manual_seed(3)
    gallery_pids = torch.arange(40) // 3
    query_pids = gallery_pids[torch.randint(0, 40, (61,), generator=gen)]
    sim = torch.randn(61, 40, generator=gen)
    results = [retrieval_metrics(sim, query_pids, gallery_pids, chunk_size=c)
               for c in (1, 7, 61, 1000)]
    for other in results[1:]:
        for key, value in results[0].items():
            assert other[key] == pytest.approx(value, rel=1e-12)


def test_relevant_items_beat_ties_and_ap_stays_bounded() -> None:
    sim = torch.tensor([[0.5, 0.5, 0.5, 0.1]])
    out = retrieval_metrics(sim, torch.tensor([1]), torch.tensor([1, 1, 2, 2]))
    assert out == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0, "mINP": 100.0}


def test_query_without_relevant_item_raises() -> None:
    with pytest.raises(ValueError, match="no relevant gallery item.*query index 1"):
        retrieval_metrics(torch.rand(2, 4), torch.tensor([0, 5]), torch.tensor([0, 1, 2, 3]))


def test_bad_shapes_and_values_raise() -> None:
    with pytest.raises(ValueError, match="gallery_pids"):
        retrieval_metrics(torch.rand(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]),
                          torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(torch.rand(1, 2), torch.tensor([0]), torch.tensor([0, 1]), chunk_size=0)


def test_evaluate_features_matches_similarity_path() -> None:
    gen = torch.Generator().manual_seed(4)
    image_pids = torch.arange(30) // 2
    text_pids = image_pids.repeat_interleave(2)
    image_feats = torch.randn(30, 16, generator=gen) * 3
    text_feats = image_feats.repeat_interleave(2, 0) + torch.randn(60, 16, generator=gen)
    sim = F.normalize(text_feats, dim=1) @ F.normalize(image_feats, dim=1).t()
    want = retrieval_metrics(sim, text_pids, image_pids)
    for chunk in (5, 64):
        got = evaluate_features(text_feats, image_feats, text_pids, image_pids, chunk_size=chunk)
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-9), key
    with pytest.raises(ValueError, match="share D"):
        evaluate_features(text_feats, image_feats[:, :8], text_pids, image_pids)


def test_float_pids_are_refused() -> None:
    with pytest.raises(ValueError, match="integer"):
        retrieval_metrics(torch.rand(1, 2), torch.tensor([0.0]), torch.tensor([0, 1]))
