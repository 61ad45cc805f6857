"""The synthetic person dataset: exact formats, determinism, faithful captions."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re

import pytest
from PIL import Image

from iclf.data.pedes import DATASETS, FORMATS, load_pedes
from iclf.data.synthetic import (COLOUR_WORDS, COLOURS, HAIR_COLOURS, HAIR_WORDS, describe,
                                 make_person, split_identities, write_synthetic)


def tree_hash(path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.mark.parametrize("name", DATASETS)
def test_same_seed_same_bytes(tmp_path, name):
    a = write_synthetic(tmp_path / "a", name, ids=4, images_per_id=2, seed=11)
    b = write_synthetic(tmp_path / "b", name, ids=4, images_per_id=2, seed=11)
    c = write_synthetic(tmp_path / "c", name, ids=4, images_per_id=2, seed=12)
    assert tree_hash(a.root) == tree_hash(b.root)
    assert tree_hash(a.root) != tree_hash(c.root)


def _records(summary):
    with open(summary.annotation_file) as f:
        return json.load(f)


def test_cuhk_format(tmp_path):
    s = write_synthetic(tmp_path, "CUHK-PEDES", ids=10, images_per_id=3, seed=0)
    assert s.annotation_file == str(tmp_path / "CUHK-PEDES" / "reid_raw.json")
    records = _records(s)
    assert len(records) == 30
    for r in records:
        assert set(r) == {"id", "file_path", "captions", "split", "processed_tokens"}
        assert len(r["captions"]) == 2 and len(r["processed_tokens"]) == 2
        assert re.fullmatch(r"(CUHK01/\d{7}|CUHK03/\d+_\d+|Market/\d{4}_c\d s1_\d{6}_00"
                            r"|(train|test)_query/p\d+_s\d+)\.jpg".replace(" ", ""), r["file_path"])
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert sorted({r["id"] for r in records}) == list(range(1, 11))


def test_icfg_format(tmp_path):
    s = write_synthetic(tmp_path, "ICFG-PEDES", ids=10, images_per_id=3, seed=0)
    assert os.path.basename(s.annotation_file) == "ICFG-PEDES.json"
    records = _records(s)
    for r in records:
        assert len(r["captions"]) == 1
        assert re.fullmatch(rf"{r['split']}/{r['id']:04d}/{r['id']:04d}_00\d\.jpg", r["file_path"])
    assert {r["split"] for r in records} == {"train", "test"}
    assert sorted({r["id"] for r in records}) == list(range(10))
    assert s.counts["val"] == {"ids": 0, "images": 0, "captions": 0}
    assert s.counts["test"]["ids"] == 2


def test_rstp_format(tmp_path):
    s = write_synthetic(tmp_path, "RSTPReid", ids=10, images_per_id=5, seed=0)
    records = _records(s)
    for r in records:
        assert set(r) == {"id", "img_path", "captions", "split"}
        assert len(r["captions"]) == 2
        assert re.fullmatch(rf"{r['id']:04d}_c\d+_000\d\.jpg", r["img_path"])
    assert s.counts == {"train": {"ids": 8, "images": 40, "captions": 80},
                        "val": {"ids": 1, "images": 5, "captions": 10},
                        "test": {"ids": 1, "images": 5, "captions": 10}}


def test_split_fractions():
    for ids in (3, 10, 57, 1000):
        cuhk = split_identities("CUHK-PEDES", ids, 0)
        assert cuhk.count("val") == max(1, round(0.1 * ids)) == cuhk.count("test")
        icfg = split_identities("ICFG-PEDES", ids, 0)
        assert icfg.count("test") == max(1, round(0.2 * ids)) and "val" not in icfg
    assert split_identities("RSTPReid", 50, 0) != split_identities("RSTPReid", 50, 1)


def test_images_are_small_vertical_jpegs(tmp_path):
    s = write_synthetic(tmp_path, "RSTPReid", ids=3, images_per_id=4, seed=2)
    data = load_pedes("RSTPReid", tmp_path, verify_images=True)
    for path in data.test.image_paths + tuple(x.image_path for x in data.train):
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 64 <= im.width <= 80 and 128 <= im.height <= 192
    big = write_synthetic(tmp_path / "big", "RSTPReid", ids=3, images_per_id=1, seed=2, scale=2.0)
    with Image.open(os.path.join(big.root, "imgs", _records(big)[0]["img_path"])) as im:
        assert 128 <= im.width <= 160 and 256 <= im.height <= 384


def _colour_words() -> dict[str, str]:
    words = {}
    for name in COLOURS:
        for w in COLOUR_WORDS.get(name, (name,)):
            words[w] = name
    return words


def test_captions_only_name_the_identity_s_attributes():
    words = _colour_words()
    hair_words = {w: name for name in HAIR_COLOURS for w in HAIR_WORDS.get(name, (name,))}
    for index in range(60):
        person = make_person(random.Random(f"0/x/person/{index}"))
        allowed = {person.upper_colour, person.lower_colour, person.shoe_colour}
        if person.pattern != "plain":
            allowed.add(person.pattern_colour)
        if person.bag is not None:
            allowed.add(person.bag_colour)
        if person.hat is not None:
            allowed.add(person.hat_colour)
        for c in range(10):
            text = describe(person, random.Random(f"{index}/{c}")).lower()
            for m in re.finditer(r"(short|long) (\w+) hair|hair is (short|long) and (\w+)", text):
                assert (m.group(1) or m.group(3)) == person.hair_length
                assert hair_words[m.group(2) or m.group(4)] == person.hair_colour
            text = re.sub(r"(short|long) \w+ hair|hair is (short|long) and \w+", "", text)
            for phrase in sorted(words, key=len, reverse=True):
                if re.search(rf"\b{phrase}\b", text):
                    assert words[phrase] in allowed, (phrase, text, person)
                    text = re.sub(rf"\b{phrase}\b", "", text)


def test_captions_vary_and_name_parts():
    person = make_person(random.Random("0/x/person/3"))
    texts = {describe(person, random.Random(i)) for i in range(40)}
    assert len(texts) > 30
    colour = person.upper_colour
    naming_upper = [t for t in texts if any(w in t for w in COLOUR_WORDS.get(colour, (colour,)))]
    assert 0 < len(naming_upper)


def test_identities_differ_in_visible_attributes():
    people = [make_person(random.Random(f"0/x/person/{i}")) for i in range(200)]
    keys = {(p.upper_type, p.upper_colour, p.pattern, p.lower_type, p.lower_colour, p.shoe_colour,
             p.bag, p.hat) for p in people}
    assert len(keys) > 190  # collisions are rare but allowed


def test_bad_arguments_and_existing_directory(tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        write_synthetic(tmp_path, "RSTPReid", ids=2, images_per_id=1)
    with pytest.raises(ValueError, match="images-per-id"):
        write_synthetic(tmp_path, "RSTPReid", ids=5, images_per_id=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        write_synthetic(tmp_path, "Market", ids=5, images_per_id=1)
    write_synthetic(tmp_path, "RSTPReid", ids=3, images_per_id=1, seed=0)
    with pytest.raises(ValueError, match="already exists"):
        write_synthetic(tmp_path, "RSTPReid", ids=3, images_per_id=1, seed=1)
    s = write_synthetic(tmp_path, "RSTPReid", ids=4, images_per_id=1, seed=1, overwrite=True)
    assert len(_records(s)) == 4
    assert sum(len(files) for _, _, files in os.walk(os.path.join(s.root, "imgs"))) == 4
    assert FORMATS["RSTPReid"].path_field == "img_path"


def test_eval_ids_sets_the_evaluation_splits(tmp_path):
    """Large evaluation splits from few identities: eval_ids val and test identities each."""
    cuhk = split_identities("CUHK-PEDES", 100, 0, eval_ids=30)
    assert cuhk.count("val") == cuhk.count("test") == 30 and cuhk.count("train") == 40
    icfg = split_identities("ICFG-PEDES", 100, 0, eval_ids=30)
    assert icfg.count("test") == 30 and "val" not in icfg
    assert split_identities("CUHK-PEDES", 100, 0) == split_identities("CUHK-PEDES", 100, 0, None)
    s = write_synthetic(tmp_path, "CUHK-PEDES", ids=12, images_per_id=2, seed=0, eval_ids=4)
    assert s.counts["val"] == {"ids": 4, "images": 8, "captions": 16} == s.counts["test"]
    with pytest.raises(ValueError, match="eval-ids"):
        write_synthetic(tmp_path / "x", "CUHK-PEDES", ids=8, images_per_id=2, eval_ids=4)
    with pytest.raises(ValueError, match="eval-ids"):
        write_synthetic(tmp_path / "y", "CUHK-PEDES", ids=8, images_per_id=2, eval_ids=0)
