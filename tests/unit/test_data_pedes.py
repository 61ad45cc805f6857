"""Loaders of the three PEDES formats on small datasets written to disk (method.md 4)."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest
from PIL import Image

from iclf.data.cli import add_data_parser, run_data
from iclf.data.errors import DatasetError
from iclf.data.pedes import DATASETS, holdout_identities, load_pedes
from iclf.data.synthetic import write_synthetic


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="iclf")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _write(root, name: str, ann_name: str, path_field: str, records: list[dict]) -> str:
    """A hand-written dataset: one tiny JPEG per record, the annotation file as given."""
    base = root / name
    for r in records:
        target = base / "imgs" / r[path_field]
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16), (r["id"] % 256, 10, 20)).save(target, "JPEG")
    (base / ann_name).write_text(json.dumps(records))
    return str(root)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summaries = {name: write_synthetic(root, name, ids=12, images_per_id=2, seed=5)
                 for name in DATASETS}
    return root, summaries


@pytest.mark.parametrize("name", DATASETS)
def test_synth_then_stats_report_the_requested_counts(synth_root, name, capsys):
    root, summaries = synth_root
    asked = summaries[name].counts
    per_image = 1 if name == "ICFG-PEDES" else 2
    assert sum(asked[s]["ids"] for s in asked) == 12
    assert sum(asked[s]["images"] for s in asked) == 24
    assert sum(asked[s]["captions"] for s in asked) == 24 * per_image
    args = ["data", "stats", "--dataset", name, "--root", str(root), "--json"]
    if name == "ICFG-PEDES":
        args += ["--val-fraction", "0"]  # no hold-out: the generator's train/test exactly
    assert run_data(_parse(args)) == 0
    assert json.loads(capsys.readouterr().out) == asked


def test_cli_synth_then_stats_table(tmp_path, capsys):
    for name in DATASETS:
        assert run_data(_parse(["data", "synth", "--root", str(tmp_path), "--dataset", name,
                                "--ids", "7", "--images-per-id", "3", "--seed", "1"])) == 0
        out = capsys.readouterr().out
        assert f"wrote {name}" in out
        assert run_data(_parse(["data", "stats", "--root", str(tmp_path), "--dataset", name])) == 0
        table = capsys.readouterr().out
        total = [line for line in table.splitlines() if line.startswith("total")][0]
        captions = 21 if name == "ICFG-PEDES" else 42
        assert [cell.strip() for cell in total.split("|")[1:]] == ["7", "21", str(captions)]


@pytest.mark.parametrize("name", DATASETS)
def test_loader_reads_generated_format(synth_root, name):
    root, summaries = synth_root
    data = load_pedes(name, root, verify_images=True)
    stats = data.stats()
    asked = summaries[name].counts
    if name == "ICFG-PEDES":  # val identities come out of train
        assert stats["val"]["ids"] >= 1
        for key in ("ids", "images", "captions"):
            assert stats["train"][key] + stats["val"][key] == asked["train"][key]
        assert stats["test"] == asked["test"]
    else:
        assert stats == asked
    assert data.num_train_ids == stats["train"]["ids"]
    assert sorted({s.pid for s in data.train}) == list(range(data.num_train_ids))
    assert all(os.path.isabs(s.image_path) and os.path.isfile(s.image_path) for s in data.train)
    # one training pair per caption; image ids run over training images
    assert {s.image_id for s in data.train} == set(range(stats["train"]["images"]))
    for split in (data.val, data.test):
        assert len(split.image_paths) == len(split.image_pids)
        assert len(split.captions) == len(split.caption_pids)
    train_raw = set(data.train_raw_ids)
    assert not train_raw & set(data.test.image_pids)
    assert not train_raw & set(data.val.image_pids)
    assert len(data.fingerprint) == 64


def test_raw_ids_are_one_based_for_cuhk_and_zero_based_otherwise(synth_root):
    root, _ = synth_root
    for name, low in (("CUHK-PEDES", 1), ("ICFG-PEDES", 0), ("RSTPReid", 0)):
        ann = {"CUHK-PEDES": "reid_raw.json", "ICFG-PEDES": "ICFG-PEDES.json",
               "RSTPReid": "data_captions.json"}[name]
        ids = [r["id"] for r in json.loads((root / name / ann).read_text())]
        assert min(ids) == low and max(ids) == low + 11


@pytest.mark.parametrize("name,ann,field", [("CUHK-PEDES", "reid_raw.json", "file_path"),
                                            ("RSTPReid", "data_captions.json", "img_path")])
def test_non_contiguous_raw_ids_are_remapped(tmp_path, name, ann, field):
    records = [
        {"id": 42, field: "a/42_1.jpg", "captions": ["a man in red", "red shirt"],
         "split": "train"},
        {"id": 5, field: "a/5_1.jpg", "captions": ["a woman in blue"], "split": "train"},
        {"id": 9, field: "a/9_1.jpg", "captions": ["black coat", "a coat", "third"],
         "split": "train"},
        {"id": 5, field: "a/5_2.jpg", "captions": ["blue dress"], "split": "train"},
        {"id": 77, field: "b/77.jpg", "captions": ["val one", "val two"], "split": "val"},
        {"id": 100, field: "c/100.jpg", "captions": ["test one"], "split": "test"},
        {"id": 101, field: "c/101.jpg", "captions": ["test two"], "split": "test"},
    ]
    data = load_pedes(name, _write(tmp_path, name, ann, field, records))
    assert data.num_train_ids == 3
    assert data.train_raw_ids == (5, 9, 42)
    pairs = [(s.pid, s.image_id, s.caption) for s in data.train]
    assert pairs == [(2, 0, "a man in red"), (2, 0, "red shirt"), (0, 1, "a woman in blue"),
                     (1, 2, "black coat"), (1, 2, "a coat"), (1, 2, "third"), (0, 3, "blue dress")]
    assert data.stats() == {"train": {"ids": 3, "images": 4, "captions": 7},
                            "val": {"ids": 1, "images": 1, "captions": 2},
                            "test": {"ids": 2, "images": 2, "captions": 2}}
    assert data.val.image_pids == (77,) and data.val.caption_pids == (77, 77)
    assert data.test.captions == ("test one", "test two")
    assert data.test.caption_pids == (100, 101)
    assert data.train[0].image_path == str(tmp_path / name / "imgs" / "a" / "42_1.jpg")


@pytest.mark.parametrize("ann", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_accepts_both_file_names(tmp_path, ann):
    records = [{"id": i, "file_path": f"train/{i:04d}/{i:04d}_{j}.jpg", "captions": [f"c{i} {j}"],
                "split": "train", "processed_tokens": [["c"]]}
               for i in (3, 8, 15, 16, 23, 42, 50, 51, 60, 61) for j in range(2)]
    records += [{"id": 99, "file_path": "test/0099/0099_0.jpg", "captions": ["t"], "split": "test"}]
    data = load_pedes("ICFG-PEDES", _write(tmp_path, "ICFG-PEDES", ann, "file_path", records))
    assert data.annotation_file.endswith(ann)
    stats = data.stats()
    assert stats["val"] == {"ids": 1, "images": 2, "captions": 2}  # 10% of 10 identities
    assert stats["train"]["ids"] == 9 and stats["test"]["ids"] == 1


def test_icfg_with_both_identical_files_loads(tmp_path):
    records = [{"id": i, "file_path": f"train/{i}.jpg", "captions": ["x"], "split": "train"}
               for i in range(4)]
    root = _write(tmp_path, "ICFG-PEDES", "ICFG-PEDES.json", "file_path", records)
    base = tmp_path / "ICFG-PEDES"
    shutil.copy(base / "ICFG-PEDES.json", base / "ICFG_PEDES.json")
    assert load_pedes("ICFG-PEDES", root).annotation_file.endswith("ICFG-PEDES.json")
    (tmp_path / "ICFG-PEDES" / "ICFG_PEDES.json").write_text("[]")
    with pytest.raises(DatasetError, match="both ICFG-PEDES.json and ICFG_PEDES.json exist"):
        load_pedes("ICFG-PEDES", root)


def test_icfg_holdout_is_deterministic_disjoint_and_seeded(synth_root):
    root, _ = synth_root
    a = load_pedes("ICFG-PEDES", root, val_fraction=0.3, split_seed=1)
    b = load_pedes("ICFG-PEDES", root, val_fraction=0.3, split_seed=1)
    assert a.val == b.val and a.train == b.train
    val_ids = set(a.val.image_pids)
    assert val_ids and not val_ids & set(a.train_raw_ids) and not val_ids & set(a.test.image_pids)
    assert len(val_ids) == round(0.3 * (len(val_ids) + a.num_train_ids))
    others = {frozenset(load_pedes("ICFG-PEDES", root, val_fraction=0.3,
                                   split_seed=s).val.image_pids) for s in range(2, 8)}
    assert len(others | {frozenset(val_ids)}) > 1  # the seed matters
    none = load_pedes("ICFG-PEDES", root, val_fraction=0.0)
    assert none.stats()["val"] == {"ids": 0, "images": 0, "captions": 0}


def test_holdout_identities_function():
    ids = [7, 7, 3, 11, 20, 20, 31, 40, 41, 50, 62, 63]
    held = holdout_identities(ids, 0.2, seed=0)
    assert held == holdout_identities(list(reversed(ids)), 0.2, seed=0)
    assert len(held) == 2 and held <= set(ids)
    assert holdout_identities(ids, 0.0, seed=0) == set()
    assert len(holdout_identities(ids, 0.01, seed=0)) == 1  # at least one
    with pytest.raises(DatasetError, match="leaves none for training"):
        holdout_identities([1, 1], 0.5, seed=0)


def test_val_fraction_refused_for_datasets_with_a_val_split(synth_root):
    root, _ = synth_root
    with pytest.raises(ValueError, match="ICFG-PEDES only"):
        load_pedes("CUHK-PEDES", root, val_fraction=0.2)
    load_pedes("CUHK-PEDES", root, val_fraction=0.1)  # the shared default passes
    with pytest.raises(ValueError, match="unknown dataset"):
        load_pedes("Market1501", root)


def test_fingerprint_tracks_the_annotation_bytes(tmp_path):
    records = [{"id": i, "img_path": f"{i}.jpg", "captions": ["x"], "split": "train"}
               for i in range(3)]
    root = _write(tmp_path, "RSTPReid", "data_captions.json", "img_path", records)
    first = load_pedes("RSTPReid", root).fingerprint
    assert load_pedes("RSTPReid", root).fingerprint == first
    records[0]["captions"] = ["y"]
    (tmp_path / "RSTPReid" / "data_captions.json").write_text(json.dumps(records))
    assert load_pedes("RSTPReid", root).fingerprint != first


def test_through_the_iclf_main_cli(tmp_path, capsys):
    main = pytest.importorskip("iclf.cli").main
    assert main(["data", "synth", "--root", str(tmp_path), "--dataset", "RSTPReid", "--ids", "5",
                 "--images-per-id", "2"]) == 0
    capsys.readouterr()
    assert main(["data", "stats", "--root", str(tmp_path), "--dataset", "RSTPReid", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert sum(stats[s]["ids"] for s in stats) == 5
    assert sum(stats[s]["captions"] for s in stats) == 20
    assert main(["data", "stats", "--root", str(tmp_path / "none"), "--dataset", "RSTPReid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]


@pytest.mark.parametrize("command", ["stats", "synth", "cache"])
def test_data_help_prints_percent_signs_once(command, capsys):
    """argparse %-formats help strings but not descriptions: a description says 10%, not 10%%."""
    with pytest.raises(SystemExit) as exit_info:
        _parse(["data", command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "%%" not in out
    if command == "synth":
        assert "10% val and 10% test" in out
