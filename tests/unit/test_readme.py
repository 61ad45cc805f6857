"""Every command in README.md is real: `iclf train` lines resolve their config (--dry-run), `iclf sweep`
lines validate their spec with their overrides, `iclf data synth` runs, every other `iclf` line
parses, and the make targets exist. The commands that need a finished sweep (summary, best,
reproduce, ui) run for real in tests/integration/test_analysis_cli.py and in the demo."""

import re
import shlex
from pathlib import Path

import pytest

from iclf.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    out = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                out.append(line)
    return out


def iclf_commands() -> list[list[str]]:
    out = []
    for line in commands():
        for part in line.split("&&"):
            argv = shlex.split(part)
            if argv and argv[0] in ("iclf", ".venv/bin/iclf"):
                out.append(argv[1:])
    return out


def test_readme_has_the_two_commands_and_they_are_make_targets():
    lines = commands()
    assert lines[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "install", "clean"):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    assert (ROOT / ".ci" / "run").read_text().count("make test") >= 1


def test_readme_images_and_links_exist():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)\)", text)
    assert targets
    for target in targets:
        if "://" not in target:
            assert (ROOT / target).is_file(), target


@pytest.mark.parametrize("argv", [a for a in iclf_commands() if a[0] == "train"],
                         ids=lambda a: " ".join(a)[:60])
def test_readme_train_commands_resolve(argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = [a for a in argv if a != "--dry-run"]
    if "--resume" in argv:  # needs a run that exists: the rest must still resolve
        i = argv.index("--resume")
        del argv[i:i + 2]
    assert main([*argv, "--dry-run"]) == 0, capsys.readouterr().err
    assert "name:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [a for a in iclf_commands() if a[0] == "sweep"],
                         ids=lambda a: " ".join(a)[:60])
def test_readme_sweep_commands_validate(argv, monkeypatch):
    pytest.importorskip("ray")
    from iclf.sweep.spec import load_spec

    monkeypatch.chdir(ROOT)
    args = build_parser().parse_args(argv)
    spec = load_spec(args.spec, args.overrides, smoke=args.smoke)
    assert spec.num_trials() != 0


def test_readme_data_synth_runs(tmp_path, monkeypatch):
    synth = [a for a in iclf_commands() if a[:2] == ["data", "synth"]]
    assert synth
    for argv in synth:
        argv = list(argv)
        argv[argv.index("--root") + 1] = str(tmp_path / "synth")
        argv[argv.index("--ids") + 1] = "6"
        assert main(argv) == 0
        assert main(["data", "stats", "--dataset", argv[argv.index("--dataset") + 1],
                     "--root", str(tmp_path / "synth")]) == 0


def test_every_other_readme_command_parses():
    parser = build_parser()
    seen = set()
    for argv in iclf_commands():
        seen.add(argv[0])
        if argv[0] not in ("train", "sweep"):
            parser.parse_args(argv)
    assert {"train", "test", "data", "sweep", "summary", "best", "reproduce", "ui"} <= seen
