"""Benchmark: chunked retrieval_metrics against a naive full-matrix argsort (method.md 5).

Prints one JSON object: wall time and peak extra memory of each implementation at CUHK-PEDES
test size (6,156 text queries x 3,074 images, ~3 images per identity, 2 captions per image) and
ICFG-PEDES test size (19,848 x 19,848, ~20 images per identity, 1 caption per image).

Each (size, implementation) runs in a fresh subprocess: it builds the inputs, resets the peak
RSS to the current RSS (``/proc/self/clear_refs``), reads ``ru_maxrss`` as the baseline, runs
the metric, and reports ``ru_maxrss`` minus the baseline (the peak extra resident memory).
The naive run is skipped, with the reason, when its estimated need exceeds 70% of MemAvailable.
The two implementations must return the same values (asserted). Scores are integers in
float32 with relevant items odd and non-relevant items even, so no relevant item ties with a
non-relevant one (ties would let an unstable argsort disagree). Both run with the same torch
thread count (default 1: the host is shared, and one thread gives steadier timings).

Usage: python bench/eval_metrics.py [--sizes cuhk icfg] [--repeats 3] [--chunk-size 256]
       [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

# Make `iclf` importable when run as `python bench/eval_metrics.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from iclf.metrics import DEFAULT_CHUNK_SIZE, retrieval_metrics  # noqa: E402

SIZES = {
    # name: (identities, gallery images, text queries)
    "cuhk": (1000, 3074, 6156),
    "icfg": (1000, 19848, 19848),
}
SCALE = 2**17  # scores are integers 2 * round(SCALE * x) (+ 1 if relevant), exact in float32
# Per-query gap between relevant and other items, uniform in [low, high] standard deviations;
# chosen so the metrics land near published ones (CUHK R1 ~70 mAP ~55, ICFG R1 ~75 mAP ~40).
GAP = {"cuhk": (2.0, 4.5), "icfg": (1.5, 4.5)}


def make_pids(identities: int, images: int, queries: int, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery pids (every identity present, the rest spread at random) and query pids
    (every image captioned once or twice, the remainder by images chosen at random)."""
    gallery = torch.cat([torch.arange(identities),
                         torch.randint(0, identities, (images - identities,), generator=gen)])
    gallery = gallery[torch.randperm(images, generator=gen)]
    per_image = queries // images
    extra = torch.randperm(images, generator=gen)[: queries - per_image * images]
    captioned = torch.cat([torch.arange(images).repeat(per_image), extra])
    query = gallery[captioned[torch.randperm(queries, generator=gen)]]
    return query, gallery


def make_similarity(query: torch.Tensor, gallery: torch.Tensor, gap: tuple[float, float],
                    gen: torch.Generator, rows: int = 512) -> torch.Tensor:
    """[Q, G] float32 scores: N(0, 1) noise plus a per-query gap for relevant items, made
    integer with relevant scores odd and the others even (no relevant / other ties).
    Built in place, block by block, so no temporary approaches the matrix size."""
    sim = torch.randn(query.numel(), gallery.numel(), generator=gen)
    low, high = gap
    shift = low + (high - low) * torch.rand(query.numel(), generator=gen)
    for start in range(0, query.numel(), rows):
        block = sim[start:start + rows]
        relevant = query[start:start + rows, None] == gallery[None, :]
        block.add_(relevant * shift[start:start + rows, None]).mul_(SCALE).round_()
        block.mul_(2.0).add_(relevant)
    return sim


def naive_metrics(sim: torch.Tensor, query: torch.Tensor, gallery: torch.Tensor
                  ) -> dict[str, float]:
    """IRRA-style evaluation: argsort of the whole matrix, then the relevance matrix."""
    order = torch.argsort(sim, dim=1, descending=True)  # (Q, G) int64
    matches = gallery[order] == query[:, None]  # (Q, G) bool, in rank order
    del order
    rows, cols = matches.nonzero(as_tuple=True)  # relevant items, row-major = rank order
    num_rel = matches.sum(1)
    del matches
    ranks = cols.to(torch.float64) + 1
    starts = torch.cumsum(num_rel, 0) - num_rel
    k = torch.arange(rows.numel(), dtype=torch.float64) - starts[rows].to(torch.float64) + 1
    ap = torch.zeros(num_rel.numel(), dtype=torch.float64).index_add_(0, rows, k / ranks)
    ap = ap / num_rel
    first = ranks[starts]
    last = ranks[starts + num_rel - 1]
    inp = num_rel.to(torch.float64) / last
    out = {f"R{c}": 100.0 * float((first <= c).double().mean()) for c in (1, 5, 10)}
    out["mAP"] = 100.0 * float(ap.mean())
    out["mINP"] = 100.0 * float(inp.mean())
    return out


def naive_bytes(queries: int, images: int) -> int:
    """Rough peak extra bytes of :func:`naive_metrics`: sort values + indices + gathered pids."""
    return queries * images * (4 + 8 + 8 + 1)


def available_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux: "5" > /proc/self/clear_refs),
    so that temporaries freed while building the inputs do not hide the metric's own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def worker(size: str, method: str, repeats: int, chunk_size: int, threads: int) -> dict:
    """Runs in a fresh process: build inputs, then time one implementation."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    identities, images, queries = SIZES[size]
    query, gallery = make_pids(identities, images, queries, gen)
    sim = make_similarity(query, gallery, GAP[size], gen)
    reset = reset_peak_rss()
    baseline = maxrss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if method == "chunked":
            values = retrieval_metrics(sim, query, gallery, chunk_size=chunk_size)
        else:
            values = naive_metrics(sim, query, gallery)
        times.append(time.perf_counter() - start)
    return {
        "seconds": min(times),
        "seconds_all": [round(t, 3) for t in times],
        "peak_extra_mib": round((maxrss_bytes() - baseline) / 2**20, 1),
        "peak_measure": "ru_maxrss delta after resetting the peak" if reset
        else "ru_maxrss delta (peak reset unavailable: a lower bound)",
        "input_mib": round(sim.numel() * 4 / 2**20, 1),
        "metrics": values,
    }


def run_worker(size: str, method: str, repeats: int, chunk_size: int, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", size, method,
           "--repeats", str(repeats), "--chunk-size", str(chunk_size), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {size}/{method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both implementations (the host is shared)")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.repeats, args.chunk_size,
                                args.threads)))
        return

    report: dict = {"torch": torch.__version__, "threads": args.threads,
                    "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                    "chunk_size": args.chunk_size, "sizes": {}}
    for size in args.sizes:
        identities, images, queries = SIZES[size]
        repeats = args.repeats if size == "cuhk" else 1
        entry: dict = {"queries": queries, "gallery": images, "identities": identities}
        entry["chunked"] = run_worker(size, "chunked", repeats, args.chunk_size, args.threads)
        need, free = naive_bytes(queries, images), available_bytes()
        if need > 0.7 * free:
            entry["naive"] = {"skipped": f"needs about {need / 2**30:.1f} GiB extra, only "
                                         f"{free / 2**30:.1f} GiB available"}
        else:
            entry["naive"] = run_worker(size, "naive", repeats, args.chunk_size, args.threads)
            for key, value in entry["naive"]["metrics"].items():
                other = entry["chunked"]["metrics"][key]
                assert abs(value - other) <= 1e-9 * max(1.0, abs(value)), (size, key, value, other)
            entry["values_identical"] = True
            entry["speedup"] = round(entry["naive"]["seconds"] / entry["chunked"]["seconds"], 2)
        report["sizes"][size] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
