"""The ``iclf`` command line: train, test, data, sweep, summary, best, reproduce, ui, demo.

Every command exits 2 with one ``error: ...`` line on bad input (a config, a dataset, a spec), and
imports only what it needs, so ``iclf --help`` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from iclf.arguments import IntermixedParser, OneLineParser
from iclf.errors import UsageError  # commands raise it; re-exported here

DESCRIPTION = """\
ICLF ablation platform for text-to-image person re-identification.

  iclf train experiments/synthetic.yaml            train one run (CPU, minutes)
  iclf test --config_file RUNDIR/configs.yaml       re-evaluate a run's selected checkpoint on test
  iclf data stats --dataset CUHK-PEDES --root DIR   count identities, images and captions per split
  iclf data synth --root DIR --dataset CUHK-PEDES   write a synthetic dataset in the real format
  iclf sweep ablations/demo.yaml                   run an ablation sweep (Ray Tune + Optuna + MLflow)
  iclf summary SWEEP | best SWEEP | reproduce SWEEP  statistics over seeds, best config, re-run it
  iclf ui                                          open the MLflow UI on the project's runs
  iclf demo                                        the newcomer's demo (what `make demo` runs)
"""

# The seed README's flags (IRRA/ICLF research code) and where they land in the config.
LEGACY_FLAGS = {
    "--name": ("name", str),
    "--batch_size": ("data.batch_size", int),
    "--dataset_name": ("data.dataset", str),
    "--root_dir": ("data.root", str),
    "--num_epoch": ("training.epochs", int),
    "--lr": ("optim.lr", float),
    "--seed": ("seed", int),
    "--eval_period": ("evaluation.eval_period", int),
    "--num_workers": ("data.num_workers", int),
    "--output_dir": ("output_dir", str),
    "--pretrain_choice": ("model.pretrained", str),
}
LEGACY_SWITCHES = ("--img_aug", "--MLM")
LEGACY_DEFAULT_EXPERIMENT = {"CUHK-PEDES": "iclf_release_cuhk.yaml",
                             "ICFG-PEDES": "iclf_release_icfg.yaml",
                             "RSTPReid": "iclf_release_rstp.yaml"}


def experiments_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "experiments"


class _TrainParser(IntermixedParser):
    """``iclf train``'s parser: intermixed, and a flag it does not know is named with the ones it
    does (the research code's flags among them)."""

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            flag = next((e for e in extras if e.startswith("-")), extras[0])
            raise UsageError(f"unknown flag {flag!r} (known: {_known_flags()})"
                             if flag.startswith("-") else f"unexpected argument {flag!r}")
        return parsed, extras


def _legacy_dest(flag: str) -> str:
    return "legacy_" + flag.lstrip("-").lower()


def _known_flags() -> str:
    return ", ".join(sorted([*LEGACY_FLAGS, "--loss_names", *LEGACY_SWITCHES, "--resume",
                             "--dry-run", "--show-param-groups", "--no-progress"]))


def add_legacy_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The seed README's training flags as argparse options (dest ``legacy_<flag>``)."""
    for flag, (key, typ) in LEGACY_FLAGS.items():
        parser.add_argument(flag, dest=_legacy_dest(flag), type=typ, default=None,
                            metavar=typ.__name__.upper(), help=f"= {key}")
    parser.add_argument("--loss_names", dest="legacy_loss_names", default=None, metavar="A+B+...",
                        help="the losses on, weight 1 each (itc, sdm, mlm, itm, id); the others 0")
    parser.add_argument("--img_aug", dest="legacy_img_aug", action="store_true",
                        help="flip, pad-and-crop and random erasing on")
    parser.add_argument("--MLM", dest="legacy_mlm", action="store_true", help="the MLM loss on")


def legacy_overrides(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """Config overrides from the parsed README flags, and the dataset they name (if any)."""
    overrides: list[str] = []
    for flag, (key, typ) in LEGACY_FLAGS.items():
        value = getattr(args, _legacy_dest(flag), None)
        if value is not None:
            overrides.append(f"{key}={_yaml_str(value)}" if typ is str else f"{key}={value!r}")
    if getattr(args, "legacy_img_aug", False):
        overrides += ["data.augment.flip=true", "data.augment.pad_crop=true",
                      "data.augment.random_erasing=true"]
    loss_value = getattr(args, "legacy_loss_names", None)
    mlm_flag = getattr(args, "legacy_mlm", False)
    if loss_value is not None:
        from iclf.config import LOSS_NAMES

        loss_names = [n.strip() for n in loss_value.strip("'\"").split("+") if n.strip()]
        unknown = [n for n in loss_names if n not in LOSS_NAMES]
        if unknown:
            raise UsageError(f"--loss_names: unknown loss {unknown[0]!r} (known: {'+'.join(LOSS_NAMES)})")
        for n in LOSS_NAMES:
            overrides.append(f"losses.weights.{n}={1.0 if n in loss_names else 0.0}")
        if mlm_flag and "mlm" not in loss_names:
            raise UsageError("--MLM is set but 'mlm' is not in --loss_names")
    elif mlm_flag:
        overrides.append("losses.weights.mlm=1.0")
    return overrides, getattr(args, _legacy_dest("--dataset_name"), None)


def legacy_to_overrides(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """Map the seed README's training flags onto config overrides. Unknown flags are errors."""
    parser = _TrainParser(prog="iclf train", add_help=False, allow_abbrev=False)
    add_legacy_flags(parser)
    return legacy_overrides(parser.parse_args(list(argv)))


def _yaml_str(value: str) -> str:
    import json

    return json.dumps(value)


# ------------------------------------------------------------------------------------ commands


def cmd_train(args: argparse.Namespace) -> int:
    from iclf.config import load_config

    config_file = args.config
    overrides = list(args.overrides)
    if config_file is not None and "=" in config_file and not Path(config_file).is_file():
        overrides.insert(0, config_file)  # `iclf train --name x lora.rank=4`: no experiment file
        config_file = None
    legacy, dataset = legacy_overrides(args)
    if config_file is None:
        if not legacy:
            raise UsageError("give an experiment file, e.g. iclf train experiments/synthetic.yaml")
        name = LEGACY_DEFAULT_EXPERIMENT.get(dataset or "CUHK-PEDES")
        if name is None:
            raise UsageError(f"--dataset_name: unknown dataset {dataset!r} "
                             f"(known: {', '.join(LEGACY_DEFAULT_EXPERIMENT)})")
        config_file = str(experiments_dir() / name)
    cfg = load_config(config_file, legacy + overrides)
    if args.show_param_groups:
        print(format_param_groups(cfg, source=config_file))
        return 0
    if args.dry_run:
        from iclf.config import to_dict
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from iclf.engine import train

    result = train(cfg, resume_from=args.resume, progress=None if not args.no_progress else False)
    if result is None:
        return 0
    print(f"[iclf] run directory: {result.run_dir}")
    print(f"[iclf] re-evaluate with: iclf test --config_file {result.run_dir}/configs.yaml")
    return 0


def format_param_groups(cfg, source: str = "") -> str:
    """The lr / weight-decay table of every trainable parameter of the model ``cfg`` builds.

    The model is built on the meta device (no weights are read, nothing is allocated), with the ID
    classifier sized 1 (its rows depend on the data, not its lr). Rows whose names differ only in a
    layer index and that share lr and weight decay are shown once, with the indices: ``{0-11}``.
    """
    import dataclasses
    import re

    import torch

    from iclf.engine.optim import param_table
    from iclf.engine.trainer import build_model, param_groups_for
    from iclf.models.reference import reference_name

    bare = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, pretrained=None, build_pretrained=False, init_from=None))
    with torch.device("meta"):
        model = build_model(bare, num_classes=1)
    rows = param_table(model.named_parameters(), param_groups_for(bare, model))
    show_ref = cfg.optim.groups == "reference"

    def pattern(name: str) -> tuple[str, tuple[int, ...]]:
        idx = tuple(int(m) for m in re.findall(r"\.(\d+)\.", name))
        return re.sub(r"\.(\d+)\.", ".{}.", name), idx

    merged: dict[tuple, dict] = {}
    for row in rows:
        pat, idx = pattern(row["name"])
        ref = reference_name(row["name"]) or "-"
        ref_pat, _ = pattern(ref)
        key = (pat, ref_pat if show_ref else "", row["lr"], row["weight_decay"], row["group"])
        entry = merged.setdefault(key, {"indices": [], "numel": 0, "tensors": 0})
        entry["indices"].append(idx)
        entry["numel"] += row["numel"]
        entry["tensors"] += 1

    def fill(pat: str, indices: list[tuple[int, ...]]) -> str:
        for slot in range(pat.count("{}")):
            values = sorted({i[slot] for i in indices})
            text = (f"{values[0]}-{values[-1]}" if len(values) > 2
                    and values == list(range(values[0], values[-1] + 1))
                    else ",".join(map(str, values)))
            pat = pat.replace("{}", "{" + text + "}" if len(values) > 1 else text, 1)
        return pat

    table = []
    for (pat, ref_pat, lr, wd, group), entry in merged.items():
        table.append((fill(pat, entry["indices"]), fill(ref_pat, entry["indices"]) if show_ref
                      else "", f"{lr:.3g}", f"{wd:.3g}", group, str(entry["tensors"])))
    heads = ("parameter", "reference name" if show_ref else "", "lr", "weight_decay", "group",
             "tensors")
    widths = [max(len(r[i]) for r in [heads, *table]) for i in range(len(heads))]
    keep = [i for i in range(len(heads)) if widths[i]]

    def line(r) -> str:
        return "  ".join(r[i].ljust(widths[i]) for i in keep).rstrip()

    o = cfg.optim
    out = [f"# {source or cfg.name}: optim.groups={o.groups}, {o.name} lr {o.lr:g}, "
           f"weight_decay {o.weight_decay:g}, lr_factor_new {o.lr_factor_new:g}, lr_factor_bias "
           f"{o.lr_factor_bias:g}, lr_factor_adapter {o.lr_factor_adapter:g}, weight_decay_bias "
           f"{o.weight_decay_bias:g}, eps {o.eps:g}",
           line(heads), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in table]
    totals: dict[str, list] = {}
    for row in rows:
        t = totals.setdefault(row["group"], [row["lr"], row["weight_decay"], 0, 0])
        t[2] += 1
        t[3] += row["numel"]
    out.append("")
    out.append(f"# {len(rows)} trainable tensors in {len(totals)} groups (the ID classifier counted "
               "with 1 row):")
    for group, (lr, wd, n, numel) in totals.items():
        out.append(f"#   {group:<40} lr {lr:<8.3g} weight_decay {wd:<8.3g} {n:>4} tensors "
                   f"{numel:>12,} values")
    return "\n".join(out)


def cmd_test(args: argparse.Namespace) -> int:
    import json

    from iclf.engine import evaluate_run

    config_file = Path(args.config_file)
    if not config_file.is_file():
        raise UsageError(f"{config_file}: no such file (give RUN_DIR/configs.yaml of a training run, "
                         "or of an IRRA/ICLF run directory)")
    metrics = evaluate_run(config_file, which=args.checkpoint, split=args.split, device=args.device,
                           root_dir=args.root_dir)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        from iclf.engine.runs import irra_preset, is_irra_args, read_run_yaml

        data = read_run_yaml(config_file)
        if is_irra_args(data):
            print(f"[iclf] {config_file}: an IRRA/ICLF run directory (loss_names "
                  f"{data['loss_names']}), evaluated as the {irra_preset(data)} preset with "
                  f"{config_file.parent / 'best.pth'}")
        print(f"[iclf] {args.split} metrics of the {args.checkpoint} checkpoint of {config_file}:")
        print("  " + "  ".join(f"{k} {v:6.2f}" for k, v in metrics.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="iclf", description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train", help="train one run from an experiment file", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one run. CONFIG is a YAML file from experiments/; key=value pairs override "
                    "it (dotted keys, YAML values), e.g.\n"
                    "  iclf train experiments/synthetic.yaml lora.rank=16 training.epochs=3\n"
                    "The seed README's flags work too, e.g.\n"
                    "  iclf train --name iclf --img_aug --batch_size 64 --MLM "
                    "--loss_names 'itc+mlm+itm+id' --dataset_name CUHK-PEDES --root_dir DIR "
                    "--num_epoch 60\n"
                    "Check a config's learning rates before a long run:\n"
                    "  iclf train experiments/iclf_release_cuhk.yaml --dry-run --show-param-groups")
    p.__class__ = _TrainParser  # the subparsers object decides the class; only parsing differs
    p.add_argument("config", nargs="?", help="experiment YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--resume", metavar="CHECKPOINT_DIR", default=None,
                   help="continue from RUN_DIR/checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--show-param-groups", action="store_true",
                   help="print every trainable parameter's lr and weight decay (and, with "
                        "optim.groups=reference, its name in the IRRA/ICLF model) and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_legacy_flags(p.add_argument_group("the research code's flags (IRRA/ICLF README)"))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="evaluate a trained run's checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Rebuild a run from its configs.yaml and evaluate its selected "
                                   "checkpoint (or the last one) on the test split.\n"
                                   "CONFIG is what iclf train wrote (RUN_DIR/configs.yaml, weights in "
                                   "RUN_DIR/checkpoint/), or the configs.yaml of a published IRRA/ICLF "
                                   "run directory (weights in best.pth beside it), e.g.\n"
                                   "  iclf test --config_file irra_cuhk/configs.yaml --root_dir data")
    p.add_argument("--config_file", required=True, metavar="CONFIG",
                   help="RUN_DIR/configs.yaml (iclf's or IRRA's/ICLF's)")
    p.add_argument("--root_dir", default=None, metavar="DIR",
                   help="the data root (replaces the config's data.root / IRRA's root_dir)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--device", default=None, help="override the run's device (cpu, cuda, auto)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_test)

    # Each layer registers its commands; their modules import Ray/MLflow only when a command runs.
    from iclf.data.cli import add_data_parser
    from iclf.demo import add_demo_parser
    from iclf.sweep.cli import add_results_parsers, add_sweep_parser

    add_data_parser(sub)
    add_sweep_parser(sub)
    add_results_parsers(sub)
    add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from iclf.config import ConfigError

    from iclf.data.errors import DatasetError
    from iclf.engine.checkpoint import CheckpointError
    from iclf.models.weights import WeightsError
    from iclf.tracking.errors import TrackingError

    expected = (UsageError, ConfigError, DatasetError, CheckpointError, WeightsError, TrackingError)
    try:
        return int(args.func(args) or 0)
    except expected as exc:
        print(f"error: {exc}".splitlines()[0] if "\n" not in str(exc) else
              "error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
