"""Training-image throughput per worker: the project's pipeline, from the JPEGs and from the
decoded-image cache, versus an IRRA-style baseline.

Each pipeline turns one training image into an augmented, normalised float32 [3, 384, 128] tensor
(method.md 3.1: resize, flip, pad 10 + random crop, normalise, random erasing):

* project: ``torchvision.io.decode_image`` on the file bytes + tensor ops on uint8
  (:func:`iclf.data.transforms.load_image` + :func:`build_train_transform`, built on
  ``transforms.v2.functional``);
* cache (``data.image_cache``): the image's row of the memory-mapped decoded-image cache
  (:mod:`iclf.data.cache`, built once before timing and read from the page cache) +
  ``TrainTransform.from_resized`` (every step after the resize); the same tensor as "project";
* baseline (IRRA style): ``PIL.Image.open(...).convert("RGB")`` + ``torchvision.transforms`` v1
  (Resize, RandomHorizontalFlip, Pad, RandomCrop, ToTensor, Normalize, RandomErasing).

The images are synthetic JPEGs at CUHK-PEDES-like sizes (128-160 x 256-384 px, ``--scale 2``),
written to a temporary directory and read once before timing (warm page cache). One thread, one
process: what one DataLoader worker does. The rounds alternate between the pipelines and each
reports its median. Prints JSON.

    python bench/data_pipeline.py [--images 400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torchvision
from PIL import Image
from torchvision import transforms as v1

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from iclf.data.cache import ensure_image_cache  # noqa: E402
from iclf.data.pedes import load_pedes  # noqa: E402
from iclf.data.synthetic import write_synthetic  # noqa: E402
from iclf.data.transforms import (CLIP_MEAN, CLIP_STD, build_train_transform,  # noqa: E402
                                  load_image)


def irra_transform(size: tuple[int, int]) -> v1.Compose:
    """The IRRA training transform with --img_aug (method.md 3.1), torchvision v1 on PIL images."""
    return v1.Compose([
        v1.Resize(size),
        v1.RandomHorizontalFlip(0.5),
        v1.Pad(10),
        v1.RandomCrop(size),
        v1.ToTensor(),
        v1.Normalize(CLIP_MEAN, CLIP_STD),
        v1.RandomErasing(scale=(0.02, 0.4), value=list(CLIP_MEAN)),
    ])


def baseline_item(path: str, transform: v1.Compose) -> torch.Tensor:
    return transform(Image.open(path).convert("RGB"))


def project_item(path: str, transform) -> torch.Tensor:
    return transform(load_image(path))


def cache_item(path: str, transform) -> torch.Tensor:
    cache = CACHES[path]
    return transform.from_resized(cache.image(cache.row(path)))


CACHES: dict = {}  # image path -> the ImageCache of its split


def time_pipeline(fn, paths: list[str], transform) -> float:
    start = time.perf_counter()
    for p in paths:
        out = fn(p, transform)
    assert out.shape[0] == 3 and out.dtype == torch.float32
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=2.0, help="synthetic image size factor")
    parser.add_argument("--image-size", type=int, nargs=2, default=(384, 128), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker uses 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.image_size)

    with tempfile.TemporaryDirectory() as tmp:
        ids = max(3, args.images // 4)
        synth = write_synthetic(tmp, "CUHK-PEDES", ids=ids, images_per_id=4, seed=0,
                                scale=args.scale)
        data = load_pedes("CUHK-PEDES", tmp)
        paths = sorted({s.image_path for s in data.train} | set(data.val.image_paths)
                       | set(data.test.image_paths))[:args.images]
        widths, heights, sizes = [], [], []
        for p in paths:
            with Image.open(p) as im:
                widths.append(im.width)
                heights.append(im.height)
            sizes.append(os.path.getsize(p))

        t0 = time.perf_counter()
        caches = ensure_image_cache(data, size, os.path.join(tmp, "cache"),
                                    splits=("train", "val", "test"), progress=False)
        cache_build_s = time.perf_counter() - t0
        for cache in caches.values():
            CACHES.update({p: cache for p in cache.paths})

        project_tf = build_train_transform(size)
        baseline_tf = irra_transform(size)
        for p in paths[:20]:  # warm-up; the cache gives what decoding gives, from the same draws
            torch.manual_seed(1)
            from_jpeg = project_item(p, project_tf)
            torch.manual_seed(1)
            assert torch.equal(from_jpeg, cache_item(p, project_tf))
            assert from_jpeg.shape == baseline_item(p, baseline_tf).shape
        torch.manual_seed(0)
        project, cached, baseline = [], [], []
        for _ in range(args.rounds):
            baseline.append(time_pipeline(baseline_item, paths, baseline_tf))
            project.append(time_pipeline(project_item, paths, project_tf))
            cached.append(time_pipeline(cache_item, paths, project_tf))

    result = {
        "benchmark": "training image decode + augmentation, images/s per worker",
        "images": len(paths),
        "rounds": args.rounds,
        "output_size": list(size),
        "source_width_px": [min(widths), max(widths)],
        "source_height_px": [min(heights), max(heights)],
        "mean_jpeg_bytes": round(statistics.mean(sizes)),
        "torch_threads": torch.get_num_threads(),
        "project_images_per_s": round(statistics.median(project), 1),
        "cache_images_per_s": round(statistics.median(cached), 1),
        "baseline_images_per_s": round(statistics.median(baseline), 1),
        "speedup": round(statistics.median(project) / statistics.median(baseline), 2),
        "cache_speedup_over_decoding": round(statistics.median(cached)
                                             / statistics.median(project), 2),
        "cache_goal": "cache_speedup_over_decoding >= 3",
        "project_rounds": [round(x, 1) for x in project],
        "cache_rounds": [round(x, 1) for x in cached],
        "baseline_rounds": [round(x, 1) for x in baseline],
        "cache_build_seconds": round(cache_build_s, 2),
        "cache_build_images": sum(len(c) for c in caches.values()),
        "project": "torchvision.io.decode_image(file bytes) + transforms.v2.functional on uint8 "
                   "tensors (iclf.data.transforms)",
        "cache": "row of the memory-mapped decoded-image cache (iclf.data.cache, warm page cache) "
                 "+ TrainTransform.from_resized",
        "baseline": "PIL open/convert RGB + torchvision.transforms v1 (IRRA style)",
        "synthetic_seconds": round(synth.seconds, 2),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
