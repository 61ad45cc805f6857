"""Text-to-image retrieval metrics: R1/R5/R10 (CMC), mAP and mINP, method.md section 5.

The computation walks over chunks of queries and never sorts a gallery row. For a query with
R relevant gallery items (same pid) whose scores, sorted descending, are r_1 >= ... >= r_R,
the 1-based rank of the k-th relevant item is

    rank_k = k + #{non-relevant m : S[n, m] > r_k}.

Only the R relevant scores are gathered (through a pid -> gallery index table) and sorted.
Every score of the row is then placed among those R thresholds with one batched
``searchsorted`` (O(G log R) per query instead of the O(G log G) of a full ``argsort``), a
histogram of the positions (``bincount``) and a reverse cumulative sum give each count, and the
relevant items' own positions are subtracted. Memory stays O(chunk_size * G): a few int32
tensors of the chunk's size. Then, as in 5:

* CMC@K = 1[rank_1 <= K];  AP = (1/R) sum_k k / rank_k;  INP = R / rank_R.

Conventions (choices documented here):

* Ties: scores are compared strictly, so a relevant item ranks ahead of non-relevant items with
  exactly the same score (optimistic). IRRA's unstable ``argsort`` breaks ties arbitrarily; with
  float similarities ties are practically absent and both agree.
* A query without any relevant gallery item raises ``ValueError`` (AP and INP are undefined).
* A gallery with fewer than 10 items is accepted: CMC@K for K >= G is then computed with what
  exists (it is 100, since every query has a relevant item). IRRA would fail indexing CMC[9].
* Scores must be finite (NaN or inf raises ``ValueError``); half / bfloat16 scores are compared
  in float32, float64 scores in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from iclf.precision import fp32_region

#: CMC cut-offs reported as "R1", "R5", "R10".
RANKS: tuple[int, ...] = (1, 5, 10)
DEFAULT_CHUNK_SIZE = 256


class _GalleryIndex:
    """Gallery indices grouped by pid, to gather each query's relevant scores directly."""

    def __init__(self, gallery_pids: torch.Tensor) -> None:
        self.pids = gallery_pids
        self.order = torch.argsort(gallery_pids, stable=True)
        self.unique, self.counts = torch.unique_consecutive(
            gallery_pids[self.order], return_counts=True
        )
        self.starts = self.counts.cumsum(0) - self.counts

    def locate(self, query_pids: torch.Tensor) -> torch.Tensor:
        """Position of each query pid in ``unique``; raises if a pid has no gallery item."""
        pos = torch.searchsorted(self.unique, query_pids).clamp(max=self.unique.numel() - 1)
        missing = self.unique[pos] != query_pids
        if bool(missing.any()):
            bad = missing.nonzero().flatten()
            raise ValueError(
                f"{bad.numel()} queries have no relevant gallery item (same pid), first query "
                f"index {int(bad[0])} with pid {int(query_pids[bad[0]])}"
            )
        return pos


class _Accumulator:
    """Sums of the per-query CMC hits, AP and INP over the chunks (float64)."""

    def __init__(self, gallery_pids: torch.Tensor) -> None:
        self.gallery = _GalleryIndex(gallery_pids)
        self.count = 0
        self.hits = {k: 0 for k in RANKS}
        self.ap = 0.0
        self.inp = 0.0

    def add(self, sim: torch.Tensor, query_pids: torch.Tensor, offset: int) -> None:
        rank_first, ap, inp = _chunk_stats(sim, query_pids, self.gallery, offset)
        self.count += sim.shape[0]
        for k in RANKS:
            self.hits[k] += int((rank_first <= k).sum())
        self.ap += float(ap.sum())
        self.inp += float(inp.sum())

    def result(self) -> dict[str, float]:
        out = {f"R{k}": 100.0 * self.hits[k] / self.count for k in RANKS}
        out["mAP"] = 100.0 * self.ap / self.count
        out["mINP"] = 100.0 * self.inp / self.count
        return out


def _check_finite(sim: torch.Tensor, offset: int) -> None:
    # One fast reduction; the exact (slower) test runs only when the sum is not finite.
    if not bool(torch.isfinite(sim.sum())) and not bool(torch.isfinite(sim).all()):
        raise ValueError(
            f"similarity rows {offset}..{offset + sim.shape[0] - 1} contain NaN or inf"
        )


def _chunk_stats(
    sim: torch.Tensor, query_pids: torch.Tensor, gallery: _GalleryIndex, offset: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query (rank of the first relevant item, AP, INP) for a [c, G] chunk of scores."""
    if sim.dtype not in (torch.float32, torch.float64):
        sim = sim.float()
    sim = sim.contiguous()  # searchsorted walks rows; a no-op for row slices of a dense matrix
    _check_finite(sim, offset)
    rows, size = sim.shape
    device = sim.device
    pos = gallery.locate(query_pids)
    num_rel = gallery.counts[pos]  # (c,)
    max_rel = int(num_rel.max())
    width = max_rel + 1

    # Relevant scores ascending; padding (+inf) after the R_n real ones of each row.
    steps = torch.arange(max_rel, device=device)
    valid = steps.unsqueeze(0) < num_rel.unsqueeze(1)  # (c, R)
    slots = (gallery.starts[pos].unsqueeze(1) + steps).clamp(max=size - 1)
    rel = sim.gather(1, gallery.order[slots])
    rel_asc = torch.where(valid, rel, torch.full_like(rel, float("inf"))).sort(dim=1).values

    # bins[n, j] = #{non-relevant m : exactly j relevant scores lie strictly below S[n, m]}:
    # histogram every item of the row, then take the relevant items' own positions out.
    small = rows * width < 2**31  # int32 positions halve the memory traffic
    index_dtype = torch.int32 if small else torch.int64
    row_base = torch.arange(rows, device=device, dtype=index_dtype).unsqueeze(1) * width
    below = torch.searchsorted(rel_asc, sim, out_int32=small)  # (c, G) in 0..R
    bins = torch.bincount((below + row_base).flatten(), minlength=rows * width)
    rel_below = torch.searchsorted(rel_asc, rel_asc, out_int32=small)  # pads are not in sim
    bins -= torch.bincount((rel_below + row_base)[valid], minlength=rows * width)
    bins = bins.view(rows, width)
    # above[n, i] = #{non-relevant m : S[n, m] > rel_asc[n, i]} = sum_{j > i} bins[n, j]
    above = bins.flip(1).cumsum(1).flip(1)[:, 1:].to(torch.float64)  # (c, R)

    # rel_asc[n, i] is the k-th best relevant item with k = R_n - i.
    k = (num_rel.unsqueeze(1) - steps.unsqueeze(0)).to(torch.float64)
    ranks = k + above
    ap = torch.where(valid, k / ranks, torch.zeros_like(ranks)).sum(1) / num_rel
    inp = num_rel.to(torch.float64) / ranks[:, 0]
    rank_first = ranks.gather(1, (num_rel - 1).unsqueeze(1)).squeeze(1)
    return rank_first, ap, inp


def _check_pids(similarity_shape: tuple[int, int], query_pids: torch.Tensor,
                gallery_pids: torch.Tensor) -> None:
    q, g = similarity_shape
    if query_pids.dim() != 1 or query_pids.shape[0] != q:
        raise ValueError(f"query_pids must have shape [{q}]; got {tuple(query_pids.shape)}")
    if gallery_pids.dim() != 1 or gallery_pids.shape[0] != g:
        raise ValueError(f"gallery_pids must have shape [{g}]; got {tuple(gallery_pids.shape)}")
    for name, pids in (("query_pids", query_pids), ("gallery_pids", gallery_pids)):
        if pids.dtype.is_floating_point or pids.dtype.is_complex or pids.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor; got {pids.dtype}")
    if q == 0 or g == 0:
        raise ValueError(f"retrieval needs at least one query and one gallery item; got {q} x {g}")


def _check_chunk_size(chunk_size: int) -> None:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")


def retrieval_metrics(
    similarity: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """R1, R5, R10, mAP and mINP in percent for text->image retrieval, method.md 5.

    ``similarity`` [Q, G] holds query (text) rows against gallery (image) columns; higher is
    more similar. Queries are processed ``chunk_size`` rows at a time; see the module docstring
    for the rank formula, the tie rule and the small-gallery convention.
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be [Q, G]; got {tuple(similarity.shape)}")
    _check_pids(tuple(similarity.shape), query_pids, gallery_pids)
    _check_chunk_size(chunk_size)
    query_pids = query_pids.to(similarity.device, torch.long)
    acc = _Accumulator(gallery_pids.to(similarity.device, torch.long))
    acc.gallery.locate(query_pids)  # every query needs a relevant item: fail before any work
    for start in range(0, similarity.shape[0], chunk_size):
        stop = start + chunk_size
        acc.add(similarity[start:stop], query_pids[start:stop], start)
    return acc.result()


@dataclass(frozen=True)
class Ranking:
    """The top ``k`` gallery items of some queries, best first, from one evaluation pass."""

    queries: tuple[int, ...]     # query (caption) indices, in the order asked
    indices: torch.Tensor        # [len(queries), k] gallery indices
    scores: torch.Tensor         # [len(queries), k] their similarities


@torch.no_grad()
def evaluate_features(
    text_feats: torch.Tensor,
    image_feats: torch.Tensor,
    text_pids: torch.Tensor,
    image_pids: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Retrieval metrics from global features (method.md 1.3 and 5), text queries vs images.

    Both feature sets are L2-normalised; the cosine similarity is computed one chunk of queries
    at a time, so the full [Q, G] matrix is never held in memory.
    """
    return rank_and_evaluate(text_feats, image_feats, text_pids, image_pids, (),
                             chunk_size=chunk_size)[0]


@torch.no_grad()
def rank_and_evaluate(
    text_feats: torch.Tensor,
    image_feats: torch.Tensor,
    text_pids: torch.Tensor,
    image_pids: torch.Tensor,
    queries: Sequence[int],
    k: int = 10,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[dict[str, float], Ranking]:
    """:func:`evaluate_features` that also keeps the top ``k`` gallery items of the chosen
    ``queries`` (caption indices), taken from the same similarity chunks: no second pass."""
    if (text_feats.dim() != 2 or image_feats.dim() != 2
            or text_feats.shape[1] != image_feats.shape[1]):
        raise ValueError(
            f"text_feats [Q, D] and image_feats [G, D] must share D; got "
            f"{tuple(text_feats.shape)} and {tuple(image_feats.shape)}"
        )
    _check_pids((text_feats.shape[0], image_feats.shape[0]), text_pids, image_pids)
    _check_chunk_size(chunk_size)
    queries = tuple(int(q) for q in queries)
    bad = [q for q in queries if not 0 <= q < text_feats.shape[0]]
    if bad:
        raise ValueError(f"query indices {bad} are outside 0..{text_feats.shape[0] - 1}")
    k = min(int(k), image_feats.shape[0])
    device = image_feats.device
    text_pids = text_pids.to(device, torch.long)
    acc = _Accumulator(image_pids.to(device, torch.long))
    acc.gallery.locate(text_pids)
    top_indices: dict[int, torch.Tensor] = {}
    top_scores: dict[int, torch.Tensor] = {}
    wanted = torch.tensor(sorted(set(queries)), dtype=torch.long)
    for start in range(0, text_feats.shape[0], chunk_size):
        stop = start + chunk_size
        sim = cosine_similarity(text_feats[start:stop].to(device), image_feats)
        acc.add(sim, text_pids[start:stop], start)
        rows = wanted[(wanted >= start) & (wanted < stop)]
        if rows.numel():
            scores, indices = sim[rows - start].float().topk(k, dim=1)
            for q, s, i in zip(rows.tolist(), scores.cpu(), indices.cpu()):
                top_scores[q], top_indices[q] = s, i
    if queries:
        ranking = Ranking(queries, torch.stack([top_indices[q] for q in queries]),
                          torch.stack([top_scores[q] for q in queries]))
    else:
        ranking = Ranking((), torch.empty(0, k, dtype=torch.long), torch.empty(0, k))
    return acc.result(), ranking


def cosine_similarity(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """``[Q, D]`` x ``[G, D]`` -> ``[Q, G]`` cosine similarities of the L2-normalised rows, in fp32,
    also when called under autocast (:mod:`iclf.precision`)."""
    with fp32_region(queries):
        return F.normalize(queries.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).t()
