"""`iclf train` arguments are parsed once, by argparse: experiment file, key=value overrides before or
after the flags, the research code's flags (README) as options; bad input is one line, exit 2."""

from pathlib import Path

import pytest
import yaml

from iclf.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
SYNTH = str(ROOT / "experiments" / "synthetic.yaml")


def dry(capsys, *argv) -> dict:
    assert main(["train", *argv, "--dry-run"]) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def test_overrides_before_and_after_flags(capsys):
    cfg = dry(capsys, SYNTH, "lora.rank=2", "--no-progress", "training.epochs=3", "--seed", "5")
    assert cfg["lora"]["rank"] == 2 and cfg["training"]["epochs"] == 3 and cfg["seed"] == 5


def test_readme_flags_are_argparse_options(capsys):
    args = build_parser().parse_args(["train", "--name", "iclf", "--img_aug", "--batch_size", "64",
                                      "--MLM", "--loss_names", "itc+mlm+itm+id", "--dataset_name",
                                      "CUHK-PEDES", "--root_dir", "data", "--num_epoch", "60"])
    assert args.config is None and args.legacy_batch_size == 64 and args.legacy_img_aug
    assert args.legacy_loss_names == "itc+mlm+itm+id" and args.legacy_mlm
    cfg = dry(capsys, "--name", "iclf", "--img_aug", "--batch_size", "64", "--MLM", "--loss_names",
              "itc+mlm+itm+id", "--dataset_name", "CUHK-PEDES", "--root_dir", "data",
              "--num_epoch", "60")
    assert cfg["name"] == "iclf" and cfg["data"]["batch_size"] == 64
    assert cfg["training"]["epochs"] == 60 and cfg["data"]["root"] == "data"
    assert cfg["losses"]["weights"] == {"itc": 1.0, "sdm": 0.0, "mlm": 1.0, "itm": 1.0, "id": 1.0}


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "many"], "argument --batch_size: invalid int value: 'many'"),
    (["--bogus_flag", "3"], "unknown flag '--bogus_flag'"),
    ([SYNTH, "--resume"], "argument --resume: expected one argument"),
    (["--loss_names", "itc+xyz"], "--loss_names: unknown loss 'xyz'"),
    (["--dataset_name", "Market"], "--dataset_name: unknown dataset 'Market'"),
])
def test_bad_arguments_are_one_line_exit_2(argv, message, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
