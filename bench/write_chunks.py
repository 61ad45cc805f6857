"""Benchmark: how fast a checkpoint reaches the page cache, by the size of each write() call.

Why it exists: on the 2-core CI machines of this project (Linux 6.x guests) one write() of 2 MiB or
more ran at about 80 MB/s while 1 MiB pieces of the same buffer ran at several GB/s, and
``torch.save`` hands each tensor's storage to one write(). The engine therefore writes checkpoints
through :class:`iclf.files.ChunkedWriter` (pieces of :data:`iclf.files.WRITE_CHUNK`).

Prints one JSON object: for each piece size, the seconds to write ``--mb`` MB of random bytes to a
new file in ``--dir`` (the median of ``--repeat`` files); and ``torch.save`` of a state of that size
(``--tensors`` equal float32 tensors) straight to a path and through ``ChunkedWriter``. Nothing is
flushed to the disk (no fsync): this is the cost of the write calls. Files are removed at the end.

Usage: python bench/write_chunks.py [--mb 172] [--tensors 4] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=172, help="bytes per file, in MB (default: the "
                    "demo's full fine-tuning state)")
    ap.add_argument("--tensors", type=int, default=4, help="tensors in the torch.save state")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()

    import torch

    from iclf.files import WRITE_CHUNK, ChunkedWriter

    torch.set_num_threads(1)
    size = args.mb * 1_000_000
    payload = os.urandom(size)
    state = {f"t{i}": torch.randn(size // 4 // args.tensors) for i in range(args.tensors)}
    out: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                             "python": platform.python_version(), "torch": torch.__version__},
                 "mb": args.mb, "repeat": args.repeat, "write_chunk": WRITE_CHUNK}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="iclf-bench-write-") as tmp:
        tmp = Path(tmp)
        n = 0

        def new_file() -> Path:
            nonlocal n
            n += 1
            return tmp / f"f{n}.bin"

        pieces = {}
        for piece in (256 << 10, 1 << 20, 2 << 20, 8 << 20, size):
            def write(piece=piece):
                view = memoryview(payload)
                with open(new_file(), "wb") as fh:
                    for start in range(0, size, piece):
                        fh.write(view[start:start + piece])
            secs = statistics.median(_timed(write) for _ in range(args.repeat))
            label = "whole" if piece == size else f"{piece >> 10} KiB"
            pieces[label] = {"s": round(secs, 4), "MB_per_s": round(args.mb / secs, 1)}
        out["write_by_piece_size"] = pieces

        def save_path():
            torch.save(state, new_file())

        def save_chunked():
            with open(new_file(), "wb") as fh:
                torch.save(state, ChunkedWriter(fh))

        direct = statistics.median(_timed(save_path) for _ in range(args.repeat))
        chunked = statistics.median(_timed(save_chunked) for _ in range(args.repeat))
        out["torch_save"] = {"tensors": args.tensors, "to_path_s": round(direct, 4),
                             "chunked_writer_s": round(chunked, 4),
                             "speedup": round(direct / chunked, 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
