"""The single-trial engine end to end on a tiny synthetic dataset (CPU, seconds per run)."""

import json
import math
from pathlib import Path

import pytest
import torch

from iclf.cli import legacy_to_overrides, main
from iclf.config import load_config
from iclf.engine import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[2]

FAST = [
    "model.backbone=tiny", "model.pretrained=null", "model.build_pretrained=false",
    "model.image_size=[64,32]", "fusion.depth=1", "fusion.heads=4", "lora.rank=4",
    "data.synthetic={ids: 16, images_per_id: 2, seed: 0}", "data.batch_size=8",
    "data.num_workers=0", "training.epochs=3", "training.max_steps_per_epoch=2",
    "schedule.warmup_epochs=1", "evaluation.batch_size=64", "device=cpu",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def fast_config(tmp_path, data_root, *extra):
    return load_config(ROOT / "experiments" / "synthetic.yaml",
                       [*FAST, f"data.root={data_root}", f"output_dir={tmp_path}", *extra])


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_run_writes_config_metrics_and_checkpoints(tmp_path, data_root):
    cfg = fast_config(tmp_path, data_root)
    result = train(cfg, console=False)
    run = Path(result.run_dir)
    assert (run / "configs.yaml").is_file()
    assert (run / "checkpoint" / "state.pt").is_file() and (run / "checkpoint" / "best.pt").is_file()
    events = jsonl(run / "metrics.jsonl")
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all("val/R1" in e and "train/loss" in e and "lr" in e for e in epochs)
    assert not any(k.startswith("test/") for e in epochs for k in e)  # test never reported per epoch
    assert events[-2]["event"] == "result" and events[-1]["event"] == "epoch"  # result before last report
    assert set(result.test) == {"R1", "R5", "R10", "mAP", "mINP"}
    assert result.chance["test"]["R1"] > 0


def test_same_seed_gives_identical_metrics(tmp_path, data_root):
    a = train(fast_config(tmp_path / "a", data_root), console=False)
    b = train(fast_config(tmp_path / "b", data_root), console=False)
    assert a.val == b.val and a.test == b.test and a.best_epoch == b.best_epoch
    c = train(fast_config(tmp_path / "c", data_root, "seed=2"), console=False)
    assert c.test != a.test or c.val != a.val


def test_interrupt_and_resume_equals_uninterrupted(tmp_path, data_root):
    full = train(fast_config(tmp_path / "full", data_root), console=False)
    cfg = fast_config(tmp_path / "cut", data_root)
    cut = train(cfg, console=False, until_epoch=1)
    assert cut.epochs_trained == 1 and cut.best_epoch == 1
    resumed = train(cfg, console=False, resume_from=cfg.run_dir.resolve() / "checkpoint")
    assert resumed.val == full.val and resumed.test == full.test
    assert resumed.test_last == full.test_last and resumed.best_epoch == full.best_epoch
    w_full = torch.load(Path(full.run_dir) / "checkpoint" / "state.pt", weights_only=True)["model"]
    w_res = torch.load(Path(resumed.run_dir) / "checkpoint" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(w_full[k], w_res[k]) for k in w_full)


def test_a_sweep_trial_writes_no_state_after_its_last_epoch(tmp_path, data_root):
    """final_state=False (what a sweep trial passes): the state of the epoch before the last stays
    (the fallback had the last report been lost), none is written once nothing can resume."""
    result = train(fast_config(tmp_path, data_root), console=False, final_state=False,
                   durable_state=False)
    state = torch.load(Path(result.run_dir) / "checkpoint" / "state.pt", weights_only=True)
    assert state["progress"]["epoch"] == 2 and result.epochs_trained == 3
    assert (Path(result.run_dir) / "checkpoint" / "best.pt").is_file()


def test_nan_loss_stops_with_step_and_components(tmp_path, data_root):
    cfg = fast_config(tmp_path, data_root, "losses.temperature=1e-40")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step 1 .*itc="):
        train(cfg, console=False)


def _swap_test_captions(src: Path, dst: Path) -> None:
    """A copy of the dataset whose TEST captions are rotated between identities (train/val intact)."""
    import shutil

    shutil.copytree(src, dst)
    ann = dst / "CUHK-PEDES" / "reid_raw.json"
    records = json.loads(ann.read_text())
    test = [r for r in records if r["split"] == "test"]
    caps = [r["captions"] for r in test]
    for r, c in zip(test, caps[len(caps) // 2:] + caps[:len(caps) // 2]):
        r["captions"] = c
    ann.write_text(json.dumps(records))


def test_test_split_never_influences_selection(tmp_path, data_root):
    base = fast_config(tmp_path / "a", data_root)
    train(base, console=False)  # makes sure the dataset exists
    other = tmp_path / "other-data"
    _swap_test_captions(Path(base.data.root), other)
    extra = ["data.synthetic=null", "training.epochs=4"]
    a = train(fast_config(tmp_path / "a", data_root, *extra), console=False)
    b = train(fast_config(tmp_path / "b", other, *extra), console=False)
    assert a.test != b.test  # the test split really differs ...
    assert a.best_epoch == b.best_epoch and a.val == b.val  # ... and selection did not move
    assert not a.paper_protocol and "selected on val" in a.to_dict()["protocol"]
    # paper protocol: selection on test, and every result says so
    p = train(fast_config(tmp_path / "p", data_root, *extra, "evaluation.paper_protocol=true"),
              console=False)
    assert p.paper_protocol and "TEST" in p.describe() and "TEST" in p.to_dict()["protocol"]
    events = jsonl(Path(p.run_dir) / "metrics.jsonl")
    reported = [e["test/R1"] for e in events if e["event"] == "epoch"]
    assert p.test["R1"] == pytest.approx(max(reported)) or math.isclose(p.test["R1"], max(reported))


def test_cli_test_reproduces_the_test_numbers(tmp_path, data_root, capsys):
    result = train(fast_config(tmp_path, data_root), console=False)
    code = main(["test", "--config_file", f"{result.run_dir}/configs.yaml", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result.test


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("losses: {weights: {itc: 1}}\noptim: {lr: fast}\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lr" in err[0] and str(bad) in err[0]


def test_seed_readme_flags_map_onto_the_config():
    argv = ["--name", "iclf", "--img_aug", "--batch_size", "64", "--MLM", "--loss_names",
            "itc+mlm+itm+id", "--dataset_name", "CUHK-PEDES", "--root_dir", "/data", "--num_epoch", "60"]
    overrides, dataset = legacy_to_overrides(argv)
    cfg = load_config(ROOT / "experiments" / "iclf_release_cuhk.yaml", overrides)
    assert dataset == "CUHK-PEDES" and cfg.name == "iclf" and cfg.data.batch_size == 64
    assert cfg.enabled_losses == ["itc", "mlm", "itm", "id"] and cfg.training.epochs == 60
    assert cfg.data.root == "/data" and cfg.data.augment.random_erasing
    with pytest.raises(Exception, match="unknown flag '--bogus'"):
        legacy_to_overrides(["--bogus", "1"])


def test_cli_train_accepts_readme_flags(capsys):
    argv = ["train", "--name", "iclf", "--img_aug", "--batch_size", "64", "--MLM", "--loss_names",
            "itc+mlm+itm+id", "--dataset_name", "CUHK-PEDES", "--root_dir", "/data", "--num_epoch",
            "60", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "name: iclf" in out and "epochs: 60" in out
    assert main(["train", "--bogus_flag", "3"]) == 2
