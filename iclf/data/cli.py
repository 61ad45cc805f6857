"""`iclf data stats|synth`: dataset statistics and the synthetic dataset generator."""

from __future__ import annotations

import argparse
import json
import sys

from iclf.data.errors import DatasetError
from iclf.data.pedes import DATASETS, SPLITS, load_pedes


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``data`` command and its ``stats`` and ``synth`` subcommands."""
    parser = subparsers.add_parser("data", help="dataset statistics and synthetic data",
                                   description="Inspect PEDES datasets or write a synthetic one.")
    parser.set_defaults(func=run_data)
    sub = parser.add_subparsers(dest="data_command", metavar="{stats,synth}", required=True)

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
                                       "DATASET under ROOT/DATASET/ (10%% val and 10%% test "
                                       "identities for CUHK-PEDES and RSTPReid, 20%% test for "
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
    return parser


def run_data(args: argparse.Namespace) -> int:
    """Run ``iclf data ...``; returns the exit code (2 with one ``error:`` line on bad input)."""
    try:
        if args.data_command == "stats":
            return _stats(args)
        if args.data_command == "synth":
            return _synth(args)
    except (DatasetError, ValueError) as e:
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
                              progress=sys.stderr.isatty())
    print(f"wrote {summary.dataset} to {summary.root} in {summary.seconds:.1f} s "
          f"(annotations: {summary.annotation_file})")
    print(format_table(summary.counts))
    return 0
