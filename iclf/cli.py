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


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def experiments_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "experiments"


def legacy_to_overrides(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """Map the seed README's training flags onto config overrides. Unknown flags are errors."""
    overrides: list[str] = []
    dataset = None
    loss_names = None
    mlm_flag = False
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag in LEGACY_SWITCHES:
            if flag == "--img_aug":
                overrides += ["data.augment.flip=true", "data.augment.pad_crop=true",
                              "data.augment.random_erasing=true"]
            else:
                mlm_flag = True
            i += 1
            continue
        if flag == "--loss_names" or flag in LEGACY_FLAGS:
            if eq:
                value = inline
                i += 1
            else:
                if i + 1 >= len(argv):
                    raise UsageError(f"{flag} needs a value")
                value = argv[i + 1]
                i += 2
            if flag == "--loss_names":
                loss_names = [n.strip() for n in value.strip("'\"").split("+") if n.strip()]
                continue
            key, typ = LEGACY_FLAGS[flag]
            try:
                typ(value)
            except ValueError:
                raise UsageError(f"{flag}: expected {typ.__name__}, got {value!r}") from None
            if key == "data.dataset":
                dataset = value
            overrides.append(f"{key}={value}" if typ is not str else f"{key}={_yaml_str(value)}")
            continue
        raise UsageError(f"unknown flag {arg!r} (known: {', '.join(sorted([*LEGACY_FLAGS, '--loss_names', *LEGACY_SWITCHES]))})")
    if loss_names is not None:
        from iclf.config import LOSS_NAMES

        unknown = [n for n in loss_names if n not in LOSS_NAMES]
        if unknown:
            raise UsageError(f"--loss_names: unknown loss {unknown[0]!r} (known: {'+'.join(LOSS_NAMES)})")
        for n in LOSS_NAMES:
            overrides.append(f"losses.weights.{n}={1.0 if n in loss_names else 0.0}")
        if mlm_flag and "mlm" not in loss_names:
            raise UsageError("--MLM is set but 'mlm' is not in --loss_names")
    elif mlm_flag:
        overrides.append("losses.weights.mlm=1.0")
    return overrides, dataset


def _yaml_str(value: str) -> str:
    import json

    return json.dumps(value)


# ------------------------------------------------------------------------------------ commands


def cmd_train(args: argparse.Namespace) -> int:
    from iclf.config import load_config

    config_file = args.config
    extra = list(args.rest)
    if config_file is not None and config_file.startswith("--"):
        extra.insert(0, config_file)
        config_file = None
    # argparse's REMAINDER keeps our own flags when they come after the overrides: take them out.
    if "--no-progress" in extra:
        extra.remove("--no-progress")
        args.no_progress = True
    if "--dry-run" in extra:
        extra.remove("--dry-run")
        args.dry_run = True
    if "--resume" in extra:
        i = extra.index("--resume")
        if i + 1 >= len(extra):
            raise UsageError("--resume needs a checkpoint directory")
        args.resume = extra[i + 1]
        del extra[i:i + 2]
    kv = [a for a in extra if not a.startswith("--") and "=" in a]
    flags = [a for a in extra if a not in kv]
    legacy, dataset = legacy_to_overrides(flags)
    if config_file is None:
        if not legacy:
            raise UsageError("give an experiment file, e.g. iclf train experiments/synthetic.yaml")
        name = LEGACY_DEFAULT_EXPERIMENT.get(dataset or "CUHK-PEDES")
        if name is None:
            raise UsageError(f"--dataset_name: unknown dataset {dataset!r} "
                             f"(known: {', '.join(LEGACY_DEFAULT_EXPERIMENT)})")
        config_file = str(experiments_dir() / name)
    cfg = load_config(config_file, legacy + kv)
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


def cmd_test(args: argparse.Namespace) -> int:
    import json

    from iclf.engine import evaluate_run

    config_file = Path(args.config_file)
    if not config_file.is_file():
        raise UsageError(f"{config_file}: no such file (give RUN_DIR/configs.yaml of a training run)")
    run_dir = config_file.parent
    metrics = evaluate_run(run_dir, which=args.checkpoint, split=args.split, device=args.device)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(f"[iclf] {args.split} metrics of the {args.checkpoint} checkpoint of {run_dir}:")
        print("  " + "  ".join(f"{k} {v:6.2f}" for k, v in metrics.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iclf", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "train", help="train one run from an experiment file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one run. CONFIG is a YAML file from experiments/; key=value pairs override "
                    "it (dotted keys, YAML values), e.g.\n"
                    "  iclf train experiments/synthetic.yaml lora.rank=16 training.epochs=3\n"
                    "The seed README's flags work too, e.g.\n"
                    "  iclf train --name iclf --img_aug --batch_size 64 --MLM "
                    "--loss_names 'itc+mlm+itm+id' --dataset_name CUHK-PEDES --root_dir DIR "
                    "--num_epoch 60")
    p.add_argument("config", nargs="?", help="experiment YAML file")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="key=value overrides or README flags")
    p.add_argument("--resume", metavar="CHECKPOINT_DIR", default=None,
                   help="continue from RUN_DIR/checkpoint")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="evaluate a trained run's checkpoint",
                       description="Rebuild a run from its configs.yaml and evaluate its selected "
                                   "checkpoint (or the last one) on the test split.")
    p.add_argument("--config_file", required=True, help="RUN_DIR/configs.yaml")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--device", default=None, help="override the run's device (cpu, cuda, auto)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_test)

    _add_optional(sub, "iclf.data.cli", "add_data_parser")
    _add_optional(sub, "iclf.sweep.cli", "add_sweep_parser")
    _add_optional(sub, "iclf.analysis.cli", "add_analysis_parsers")
    _add_optional(sub, "iclf.demo", "add_demo_parser")
    return parser


def _add_optional(sub, module: str, func: str) -> None:
    """Register the commands of a layer (they import Ray/MLflow only when run)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("iclf"):
            return
        raise
    getattr(mod, func)(sub)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train" and not {"-h", "--help"} & set(argv[1:]):
        # The seed README's flags (--name iclf ...) are not argparse options of ours: split by hand.
        rest = argv[1:]
        config = rest.pop(0) if rest and not rest[0].startswith("-") and "=" not in rest[0] else None
        args = argparse.Namespace(command="train", func=cmd_train, config=config, rest=rest,
                                  resume=None, dry_run=False, no_progress=False)
    else:
        args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from iclf.config import ConfigError

    expected: tuple[type[BaseException], ...] = (UsageError, ConfigError)
    try:
        from iclf.data.errors import DatasetError
        from iclf.engine.checkpoint import CheckpointError
        from iclf.models.weights import WeightsError

        expected += (DatasetError, CheckpointError, WeightsError)
    except ImportError:  # pragma: no cover
        pass
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
