"""Text-to-image retrieval metrics: R1/R5/R10 (CMC), mAP and mINP, method.md section 5.

The computation walks over chunks of queries and never sorts a full gallery row. For a query
with R relevant gallery items (same pid) whose scores, sorted descending, are r_1 >= ... >= r_R,
the 1-based rank of the k-th relevant item is

    rank_k = k + #{non-relevant m : S[n, m] > r_k},

so only the R relevant scores are sorted (``topk``), and each non-relevant score is placed among
them with ``searchsorted`` and counted in a histogram of R + 1 bins. This is O(G log R) per
query against the O(G log G) of a full ``argsort``, and memory is O(chunk_size * G).
Then, as in 5:

* CMC@K = 1[rank_1 <= K];  AP = (1/R) sum_k k / rank_k;  INP = R / rank_R.

Conventions (choices documented here):

* Ties: scores are compared strictly, so a relevant item ranks ahead of non-relevant items with
  exactly the same score (optimistic). IRRA's unstable ``argsort`` breaks ties arbitrarily; with
  float similarities ties are practically absent and both agree.
* A query without any relevant gallery item raises ``ValueError`` (AP and INP are undefined).
* A gallery with fewer than 10 items is accepted: CMC@K for K >= G is then computed with what
  exists (it is 100, since every query has a relevant item). IRRA would fail indexing CMC[9].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: CMC cut-offs reported as "R1", "R5", "R10".
RANKS: tuple[int, ...] = (1, 5, 10)
DEFAULT_CHUNK_SIZE = 256


class _Accumulator:
    """Sums of the per-query CMC hits, AP and INP over the chunks (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.hits = {k: 0 for k in RANKS}
        self.ap = 0.0
        self.inp = 0.0

    def add(self, sim: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor,
            offset: int) -> None:
        rank_first, ap, inp = _chunk_stats(sim, query_pids, gallery_pids, offset)
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


def _chunk_stats(
    sim: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor, offset: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query (rank of the first relevant item, AP, INP) for a [c, G] chunk of scores."""
    if sim.dtype not in (torch.float32, torch.float64):
        sim = sim.float()  # half / bfloat16 scores are compared in float32
    if not bool(torch.isfinite(sim).all()):
        raise ValueError(f"similarity rows {offset}..{offset + sim.shape[0] - 1} contain NaN or inf")
    relevant = query_pids.unsqueeze(1) == gallery_pids.unsqueeze(0)  # (c, G)
    num_rel = relevant.sum(dim=1)  # (c,)
    if bool((num_rel == 0).any()):
        bad = (num_rel == 0).nonzero().flatten()
        raise ValueError(
            f"{bad.numel()} queries have no relevant gallery item (same pid), first query index "
            f"{offset + int(bad[0])} with pid {int(query_pids[bad[0]])}"
        )
    max_rel = int(num_rel.max())
    neg_inf = torch.tensor(float("-inf"), dtype=sim.dtype, device=sim.device)

    # Relevant scores, descending; rows with fewer than max_rel relevant items end in -inf.
    rel_desc = torch.where(relevant, sim, neg_inf).topk(max_rel, dim=1).values  # (c, R)
    rel_asc = rel_desc.flip(1).contiguous()
    # For every non-relevant item, the number of relevant scores strictly below it; relevant
    # items become -inf and land in bin 0, which never counts.
    nonrel = torch.where(relevant, neg_inf, sim)
    below = torch.searchsorted(rel_asc, nonrel, right=False)  # (c, G) in 0..R
    hist = torch.zeros(sim.shape[0], max_rel + 1, dtype=torch.long, device=sim.device)
    hist.scatter_add_(1, below, torch.ones_like(below))
    # above_asc[:, i] = #{non-relevant m : S[m] > rel_asc[:, i]} = sum_{j > i} hist[:, j]
    above_asc = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # (c, R)
    above_desc = above_asc.flip(1)  # aligned with rel_desc
    k = torch.arange(1, max_rel + 1, device=sim.device, dtype=torch.float64)
    ranks = k + above_desc.to(torch.float64)  # (c, R), rank of the k-th relevant item
    valid = k.unsqueeze(0) <= num_rel.unsqueeze(1)
    ap = torch.where(valid, k / ranks, torch.zeros_like(ranks)).sum(1) / num_rel
    last = ranks.gather(1, (num_rel - 1).unsqueeze(1)).squeeze(1)
    inp = num_rel.to(torch.float64) / last
    return ranks[:, 0], ap, inp


def _check_pids(similarity_shape: tuple[int, int], query_pids: torch.Tensor,
                gallery_pids: torch.Tensor) -> None:
    q, g = similarity_shape
    if query_pids.dim() != 1 or query_pids.shape[0] != q:
        raise ValueError(f"query_pids must have shape [{q}]; got {tuple(query_pids.shape)}")
    if gallery_pids.dim() != 1 or gallery_pids.shape[0] != g:
        raise ValueError(f"gallery_pids must have shape [{g}]; got {tuple(gallery_pids.shape)}")
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
    query_pids = query_pids.to(similarity.device)
    gallery_pids = gallery_pids.to(similarity.device)
    acc = _Accumulator()
    for start in range(0, similarity.shape[0], chunk_size):
        stop = start + chunk_size
        acc.add(similarity[start:stop], query_pids[start:stop], gallery_pids, start)
    return acc.result()


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
    if text_feats.dim() != 2 or image_feats.dim() != 2 or text_feats.shape[1] != image_feats.shape[1]:
        raise ValueError(
            f"text_feats [Q, D] and image_feats [G, D] must share D; got "
            f"{tuple(text_feats.shape)} and {tuple(image_feats.shape)}"
        )
    _check_pids((text_feats.shape[0], image_feats.shape[0]), text_pids, image_pids)
    _check_chunk_size(chunk_size)
    gallery = F.normalize(image_feats.float(), dim=-1)
    device = gallery.device
    text_pids = text_pids.to(device)
    image_pids = image_pids.to(device)
    acc = _Accumulator()
    for start in range(0, text_feats.shape[0], chunk_size):
        stop = start + chunk_size
        queries = F.normalize(text_feats[start:stop].to(device).float(), dim=-1)
        acc.add(queries @ gallery.t(), text_pids[start:stop], image_pids, start)
    return acc.result()
