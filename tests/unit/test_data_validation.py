"""Every kind of bad dataset input raises DatasetError naming the file, record and field."""

from __future__ import annotations

import argparse
import copy
import json
import os

import pytest
from PIL import Image

from iclf.data.cli import add_data_parser, run_data
from iclf.data.errors import DatasetError
from iclf.data.pedes import load_pedes
from iclf.data.transforms import build_test_transform, load_image

GOOD = [
    {"id": 1, "file_path": "CUHK01/0001001.jpg", "captions": ["a man in red", "red top"],
     "split": "train", "processed_tokens": [["a"], ["b"]]},
    {"id": 2, "file_path": "CUHK01/0002001.jpg", "captions": ["a woman in blue"], "split": "train"},
    {"id": 3, "file_path": "CUHK03/3_1.jpg", "captions": ["green coat"], "split": "val"},
    {"id": 4, "file_path": "test_query/p4_s1.jpg", "captions": ["black jeans"], "split": "test"},
]


def write_cuhk(root, records, images=None) -> str:
    """Write CUHK-PEDES under root; images defaults to every path named by a good record."""
    base = root / "CUHK-PEDES"
    (base / "imgs").mkdir(parents=True, exist_ok=True)
    for rel in (images if images is not None else [r["file_path"] for r in GOOD]):
        target = base / "imgs" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16), (200, 10, 20)).save(target, "JPEG")
    text = records if isinstance(records, str) else json.dumps(records)
    (base / "reid_raw.json").write_text(text)
    return str(root)


def expect(root, *, record, field, text, name="CUHK-PEDES", **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_pedes(name, root, **kwargs)
    err = info.value
    message = str(err)
    assert err.record == record and err.field == field
    assert err.file.startswith(str(root))
    assert message.startswith(err.file)
    if record is not None:
        assert f"record {record}" in message
    if field is not None:
        assert f"field '{field}'" in message
    assert text in message, message
    return err


def edited(index: int, **changes) -> list[dict]:
    records = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is KeyError:
            del records[index][key]
        else:
            records[index][key] = value
    return records


def test_good_dataset_loads(tmp_path):
    assert load_pedes("CUHK-PEDES", write_cuhk(tmp_path, GOOD)).stats()["train"] == {
        "ids": 2, "images": 2, "captions": 3}


def test_malformed_json(tmp_path):
    root = write_cuhk(tmp_path, '[{"id": 1, "file_path": "a.jpg",\n "captions": [}]')
    expect(root, record=None, field=None, text="malformed JSON at line 2 column")


def test_not_utf8(tmp_path):
    root = write_cuhk(tmp_path, "[]")
    (tmp_path / "CUHK-PEDES" / "reid_raw.json").write_bytes(b'[{"id": 1, "x": "\xff\xfe"}]')
    expect(root, record=None, field=None, text="malformed JSON")


def test_top_level_must_be_a_nonempty_list(tmp_path):
    expect(write_cuhk(tmp_path, {"records": []}), record=None, field=None,
           text="expected a JSON list of records, got an object")
    expect(write_cuhk(tmp_path, []), record=None, field=None, text="contains no records")


def test_record_must_be_an_object(tmp_path):
    records = copy.deepcopy(GOOD) + [["not", "an", "object"]]
    expect(write_cuhk(tmp_path, records), record=4, field=None,
           text="expected a JSON object, got a list")


@pytest.mark.parametrize("field", ["id", "file_path", "captions", "split"])
def test_missing_field(tmp_path, field):
    expect(write_cuhk(tmp_path, edited(2, **{field: KeyError})), record=2, field=field,
           text="missing field")


def test_rstp_needs_img_path_not_file_path(tmp_path):
    base = tmp_path / "RSTPReid"
    (base / "imgs").mkdir(parents=True)
    Image.new("RGB", (8, 16)).save(base / "imgs" / "0000_c1_0001.jpg")
    (base / "data_captions.json").write_text(json.dumps(
        [{"id": 0, "file_path": "0000_c1_0001.jpg", "captions": ["x"], "split": "train"}]))
    expect(str(tmp_path), name="RSTPReid", record=0, field="img_path", text="missing field")


@pytest.mark.parametrize("field,value,text", [
    ("id", "12", "expected an integer, got a string ('12')"),
    ("id", True, "expected an integer, got a boolean"),
    ("id", 1.5, "expected an integer, got a number"),
    ("id", -3, "expected a non-negative integer, got -3"),
    ("file_path", 17, "expected a string, got an integer"),
    ("captions", "a man in red", "expected a list of strings, got a string"),
    ("split", None, "expected a string, got null"),
])
def test_mistyped_field(tmp_path, field, value, text):
    expect(write_cuhk(tmp_path, edited(1, **{field: value})), record=1, field=field, text=text)


def test_mistyped_caption(tmp_path):
    expect(write_cuhk(tmp_path, edited(0, captions=["fine", 3])), record=0, field="captions[1]",
           text="expected a string, got an integer")


def test_empty_captions(tmp_path):
    expect(write_cuhk(tmp_path, edited(3, captions=[])), record=3, field="captions",
           text="empty list")
    expect(write_cuhk(tmp_path, edited(3, captions=["ok", "   "])), record=3, field="captions[1]",
           text="empty caption")


def test_unknown_split_refused(tmp_path):
    expect(write_cuhk(tmp_path, edited(2, split="validation")), record=2, field="split",
           text="unknown split 'validation' (allowed: train, val, test)")


def test_icfg_refuses_a_val_split(tmp_path):
    base = tmp_path / "ICFG-PEDES"
    (base / "imgs" / "train").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 16)).save(base / "imgs" / "train" / f"{i}.jpg")
    (base / "ICFG-PEDES.json").write_text(json.dumps(
        [{"id": i, "file_path": f"train/{i}.jpg", "captions": ["x"], "split": s}
         for i, s in enumerate(["train", "val"])]))
    expect(str(tmp_path), name="ICFG-PEDES", record=1, field="split",
           text="unknown split 'val' (allowed: train, test; ICFG-PEDES has no val split")


def test_no_training_records(tmp_path):
    records = [r for r in GOOD if r["split"] != "train"]
    expect(write_cuhk(tmp_path, records), record=None, field="split",
           text="no record has split 'train'")


@pytest.mark.parametrize("path,text", [
    ("/etc/passwd", "absolute path '/etc/passwd' refused"),
    ("C:\\data\\x.jpg", "absolute path"),
    ("\\\\server\\share\\x.jpg", "absolute path"),
    ("../outside.jpg", "'..' would escape the dataset root"),
    ("CUHK01/../../x.jpg", "'..' would escape the dataset root"),
    ("", "empty path"),
    ("./", "names no file"),
])
def test_paths_escaping_the_root_refused(tmp_path, path, text):
    expect(write_cuhk(tmp_path, edited(1, file_path=path)), record=1, field="file_path", text=text)


def test_backslash_separators_are_accepted(tmp_path):
    root = write_cuhk(tmp_path, edited(0, file_path="CUHK01\\0001001.jpg"))
    data = load_pedes("CUHK-PEDES", root)
    assert data.train[0].image_path.endswith(os.path.join("imgs", "CUHK01", "0001001.jpg"))


def test_missing_images_counted_and_listed(tmp_path):
    images = [GOOD[0]["file_path"], GOOD[2]["file_path"]]
    err = expect(write_cuhk(tmp_path, GOOD, images=images), record=1, field="file_path",
                 text="2 of 4 image files missing under")
    assert "CUHK01/0002001.jpg, test_query/p4_s1.jpg" in str(err)


def test_many_missing_images_show_the_first_few(tmp_path):
    records = [{"id": i, "file_path": f"x/{i}.jpg", "captions": ["c"], "split": "train"}
               for i in range(9)]
    err = expect(write_cuhk(tmp_path, records, images=[]), record=0, field="file_path",
                 text="9 of 9 image files missing")
    assert "x/0.jpg, x/1.jpg, x/2.jpg, x/3.jpg, x/4.jpg, ..." in str(err)
    assert "x/5.jpg" not in str(err)


def test_undecodable_image_named_up_front_with_verify(tmp_path):
    root = write_cuhk(tmp_path, GOOD)
    bad = tmp_path / "CUHK-PEDES" / "imgs" / GOOD[2]["file_path"]
    bad.write_bytes(b"this is not an image")
    data = load_pedes("CUHK-PEDES", root)  # without verify the load succeeds ...
    err = expect(root, record=2, field="file_path", text="cannot decode image", verify_images=True)
    assert str(bad) in str(err)
    with pytest.raises(DatasetError, match="cannot decode image") as info:  # ... named when read
        load_image(data.val.image_paths[0])
    assert info.value.file == str(bad)


def test_truncated_and_empty_images_named_when_read(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (32, 64), (1, 2, 3)).save(good, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:40])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (truncated, empty):
        with pytest.raises(DatasetError, match="cannot decode image") as info:
            load_image(path)
        assert str(path) in str(info.value)
    with pytest.raises(DatasetError, match="cannot read image"):
        load_image(tmp_path / "absent.jpg")


def test_undecodable_image_raises_from_torch_datasets(tmp_path):
    from iclf.data.datasets import ImageSet

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=f"{bad}: cannot decode image"):
        ImageSet([str(bad)], [0], build_test_transform((32, 16)))[0]


def test_missing_root_annotation_and_image_dir_say_what_to_put_where(tmp_path):
    err = expect(tmp_path / "nope", record=None, field=None,
                 text="dataset root directory does not exist")
    assert "reid_raw.json" in str(err) and "imgs/" in str(err)
    expect(tmp_path, record=None, field=None,
           text="no annotation file found; put the annotation file at "
                f"{tmp_path}/CUHK-PEDES/reid_raw.json")
    expect(tmp_path, name="ICFG-PEDES", record=None, field=None,
           text="ICFG-PEDES.json or ")
    (tmp_path / "CUHK-PEDES").mkdir()
    (tmp_path / "CUHK-PEDES" / "reid_raw.json").write_text(json.dumps(GOOD))
    expect(tmp_path, record=None, field=None, text="image directory does not exist")


def test_cli_prints_one_error_line_and_returns_2(tmp_path, capsys):
    root = write_cuhk(tmp_path, edited(2, split="validation"))
    parser = argparse.ArgumentParser(prog="iclf")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    code = run_data(parser.parse_args(["data", "stats", "--dataset", "CUHK-PEDES", "--root", root]))
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and "reid_raw.json, record 2, field 'split'" in lines[0]
