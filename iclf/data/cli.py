"""`iclf data stats|synth|cache`: dataset statistics, the synthetic dataset generator and the
decoded-image cache."""

from __future__ import annotations

import argparse
import json
import os
import sys

from iclf.data.errors import DatasetError
from iclf.data.pedes import DATASETS, SPLITS, load_pedes


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``data`` command and its ``stats`` and ``synth`` subcommands."""
    parser = subparsers.add_parser("data", help="dataset statistics and synthetic data",
                                   description="Inspect PEDES datasets or write a synthetic one.")
    parser.set_defaults(func=run_data)
    sub = parser.add_subparsers(dest="data_command", metavar="{stats,synth,cache}", required=True)

    stats = sub.add_parser("stats", help="identities, images and captions per split",
                           description="Load and validate a dataset; print identities, images and "
                                       "captions per split.")
    stats.add_argument("--dataset", required=True, choices=DATASETS)
    stats.add_argument("--root", required=True, help="directory that contains <DATASET>/")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--val-fraction", type=float, default=None,
                       help="ICFG-PEDES only: fraction of training identities held out as val "
                            "(default 0.1)")
    stats.add_argument("--split-seed", type=int, default=0,
                       help="seed of the ICFG-PEDES val hold-out (default 0)")
    stats.add_argument("--verify", action="store_true", help="decode every image up front")

    synth = sub.add_parser("synth", help="write a synthetic dataset in a PEDES format",
                           description="Write a synthetic person dataset in the on-disk format of "
                                       "DATASET under ROOT/DATASET/ (10% val and 10% test "
                                       "identities for CUHK-PEDES and RSTPReid, 20% test for "
                                       "ICFG-PEDES).")
    synth.add_argument("--root", required=True, help="directory that will contain <DATASET>/")
    synth.add_argument("--dataset", required=True, choices=DATASETS)
    synth.add_argument("--ids", type=int, required=True, help="total identities (at least 3)")
    synth.add_argument("--images-per-id", type=int, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--scale", type=float, default=1.0,
                       help="image size factor (1.0: 64-80 x 128-192 px)")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace an existing ROOT/DATASET directory")
    synth.add_argument("--eval-ids", type=int, default=None,
                       help="identities in val and in test each, instead of 10%% (ICFG-PEDES: in "
                            "test)")

    cache = sub.add_parser(
        "cache", help="decode and resize a dataset's images once, for every run to share",
        description="Decode and resize every image of the chosen splits once into one "
                    "memory-mapped uint8 file per split and image size (what training reads with "
                    "data.image_cache=auto or a directory, instead of decoding every JPEG every "
                    "epoch). A file that is up to date is kept; one built from another version of "
                    "the dataset, another image size, or that is truncated or foreign is rebuilt. "
                    "Give an experiment config, or --dataset and --root.")
    cache.add_argument("config", nargs="?", default=None,
                       help="experiment YAML: dataset, root, image size and data.image_cache "
                            "from it")
    cache.add_argument("overrides", nargs="*", default=[], help="config key=value overrides")
    cache.add_argument("--dataset", choices=DATASETS, default=None)
    cache.add_argument("--root", default=None, help="directory that contains <DATASET>/")
    cache.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="training image size (default 384 128, or the config's)")
    cache.add_argument("--dir", default=None,
                       help="cache directory (default <root>/.iclf-cache, what "
                            "data.image_cache=auto uses, or the config's data.image_cache)")
    cache.add_argument("--splits", nargs="+", choices=SPLITS, default=["train"],
                       help="splits to cache (default: train, what training reads)")
    cache.add_argument("--val-fraction", type=float, default=None,
                       help="ICFG-PEDES only: fraction of training identities held out as val")
    cache.add_argument("--split-seed", type=int, default=0)
    cache.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                       help="decoding processes (default: min(8, CPUs))")
    return parser


def run_data(args: argparse.Namespace) -> int:
    """Run ``iclf data ...``; returns the exit code (2 with one ``error:`` line on bad input)."""
    try:
        if args.data_command == "stats":
            return _stats(args)
        if args.data_command == "synth":
            return _synth(args)
        if args.data_command == "cache":
            return _cache(args)
    except (DatasetError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"error: unknown data command {args.data_command!r}", file=sys.stderr)
    return 2


def _stats(args: argparse.Namespace) -> int:
    data = load_pedes(args.dataset, args.root, val_fraction=args.val_fraction,
                      split_seed=args.split_seed, verify_images=args.verify,
                      progress=args.verify and sys.stderr.isatty())
    stats = data.stats()
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    print(f"{data.name}  ({data.annotation_file})")
    print(format_table(stats))
    return 0


def format_table(stats: dict[str, dict[str, int]]) -> str:
    """A plain-text table: split | ids | images | captions, with a total row."""
    rows = [[split, *(str(stats[split][k]) for k in ("ids", "images", "captions"))]
            for split in SPLITS]
    rows.append(["total", *(str(sum(stats[s][k] for s in SPLITS))
                            for k in ("ids", "images", "captions"))])
    header = ["split", "ids", "images", "captions"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(cells: list[str]) -> str:
        return " | ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                          for i, c in enumerate(cells))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])])


def _synth(args: argparse.Namespace) -> int:
    from iclf.data.synthetic import write_synthetic

    summary = write_synthetic(args.root, args.dataset, args.ids, args.images_per_id, args.seed,
                              scale=args.scale, overwrite=args.overwrite,
                              progress=sys.stderr.isatty(), eval_ids=args.eval_ids)
    print(f"wrote {summary.dataset} to {summary.root} in {summary.seconds:.1f} s "
          f"(annotations: {summary.annotation_file})")
    print(format_table(summary.counts))
    return 0


def _cache(args: argparse.Namespace) -> int:
    from iclf.data.cache import cache_dir_for, ensure_image_cache

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.config is not None:
        from iclf.config import load_config
        from iclf.engine.trainer import prepare_data, resolve_paths

        if args.dataset or args.root:
            raise ValueError("give an experiment config or --dataset/--root, not both")
        cfg = resolve_paths(load_config(args.config, args.overrides))
        data = prepare_data(cfg)  # generates the synthetic dataset first when the config asks
        root = cfg.data.root
        image_size = tuple(args.image_size or cfg.model.image_size)
        setting = args.dir or (cfg.data.image_cache if cfg.data.image_cache != "off" else "auto")
        if cfg.data.image_cache == "off":
            print(f"note: {args.config} sets data.image_cache=off: its runs decode the JPEGs and "
                  "will not read this cache", file=sys.stderr)
    else:
        if args.overrides:
            raise ValueError(f"key=value overrides need an experiment config: {args.overrides[0]}")
        if not (args.dataset and args.root):
            raise ValueError("give an experiment config, or both --dataset and --root")
        root = args.root
        data = load_pedes(args.dataset, root, val_fraction=args.val_fraction,
                          split_seed=args.split_seed)
        image_size = tuple(args.image_size or (384, 128))
        setting = args.dir or "auto"
    cache_dir = cache_dir_for(setting, root)
    caches = ensure_image_cache(data, image_size, cache_dir, splits=args.splits,
                                num_workers=args.workers)
    for split in args.splits:
        cache = caches.get(split)
        if cache is None:
            print(f"{split:5s}  no images, nothing to cache")
            continue
        state = "built" if cache.built else "up to date"
        size_mib = cache.path.stat().st_size / 2**20
        print(f"{split:5s}  {len(cache):>7,} images  {size_mib:>9,.1f} MiB  {state:10s}  "
              f"{cache.path}")
    return 0
