"""The decoded-image cache (iclf.data.cache): the same batches as the JPEGs, rebuilt when the
dataset changed, a truncated or foreign file rebuilt with a message and never read, the config
switch and the command."""

from __future__ import annotations

import json
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from iclf.config import ConfigError, load_config
from iclf.data import cache as image_cache
from iclf.data.cache import (ImageCache, ImageCacheError, StaleCache, cache_file,
                             ensure_image_cache, read_header, split_image_paths,
                             train_image_cache)
from iclf.data.datasets import ImageSet
from iclf.data.pedes import load_pedes
from iclf.data.synthetic import write_synthetic
from iclf.data.transforms import build_test_transform, load_image, resize_image
from iclf.engine.trainer import build_train_loader
from iclf.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 32)


def make_data(root: Path, ids: int = 12):
    write_synthetic(root, "CUHK-PEDES", ids=ids, images_per_id=2, seed=3)
    return load_pedes("CUHK-PEDES", root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("cache-data"))


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def config(data_root, cache_setting, workers=0, **extra):
    over = ["model.backbone=tiny", "model.pretrained=null", "model.build_pretrained=false",
            f"model.image_size=[{SIZE[0]},{SIZE[1]}]", f"data.root={data_root}",
            f"data.image_cache={cache_setting}", "data.batch_size=8",
            f"data.num_workers={workers}", "device=cpu", "data.synthetic=null"]
    over += [f"{k}={v}" for k, v in extra.items()]
    return load_config(ROOT / "experiments" / "synthetic.yaml", over)


def epoch_batches(cfg, data, tokenizer, epochs=(1, 2)):
    """The batches of whole epochs, seeded exactly as the trainer seeds them."""
    dataset, sampler, loader = build_train_loader(cfg, data, tokenizer, torch.device("cpu"))
    out = []
    for epoch in epochs:
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        out.append(list(loader))
    return dataset, out


def no_decoding(*args, **kwargs):
    raise AssertionError("a JPEG was decoded although the image cache is on")


@pytest.mark.parametrize("workers,sampler", [(0, "random"), (2, "identity")])
def test_cache_gives_bit_identical_batches(data, tokenizer, tmp_path, monkeypatch, workers,
                                           sampler):
    extra = {"data.sampler": sampler, "data.num_instance": 2}
    jpeg_set, from_jpegs = epoch_batches(config(Path(data.root).parent, "off", workers, **extra),
                                         data, tokenizer)
    assert jpeg_set.image_cache is None
    ensure_image_cache(data, SIZE, tmp_path)
    # with the cache on, nothing may decode a JPEG (in the workers either: they are forked)
    monkeypatch.setattr("iclf.data.datasets.load_image", no_decoding)
    cached_set, from_cache = epoch_batches(config(Path(data.root).parent, tmp_path, workers,
                                                  **extra), data, tokenizer)
    assert cached_set.image_cache is not None and cached_set.image_cache.path.parent == tmp_path
    assert len(from_jpegs[0]) == len(from_cache[0]) > 1
    for epoch_a, epoch_b in zip(from_jpegs, from_cache):
        for a, b in zip(epoch_a, epoch_b):
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), key
    # and the augmentation really ran on the cached images (two epochs differ)
    assert not torch.equal(from_cache[0][0]["images"], from_cache[1][0]["images"])


def test_setting_switches_the_code_path(data, tokenizer, monkeypatch):
    root = Path(data.root).parent
    calls = []
    real = load_image
    monkeypatch.setattr("iclf.data.datasets.load_image", lambda p: calls.append(p) or real(p))
    off_set, _, _ = build_train_loader(config(root, "off"), data, tokenizer, torch.device("cpu"))
    off_set[0]
    assert off_set.image_cache is None and len(calls) == 1
    auto_set, _, _ = build_train_loader(config(root, "auto"), data, tokenizer, torch.device("cpu"))
    auto_set[0]
    assert len(calls) == 1, "auto read the JPEG instead of the cache"
    assert auto_set.image_cache.path == cache_file(root / ".iclf-cache", "CUHK-PEDES", "train",
                                                   SIZE)


def test_eval_images_from_the_cache_equal_the_jpegs(data, tmp_path):
    caches = ensure_image_cache(data, SIZE, tmp_path, splits=("val", "test"))
    transform = build_test_transform(SIZE)
    for split in ("val", "test"):
        s = getattr(data, split)
        plain = ImageSet(s.image_paths, s.image_pids, transform)
        cached = ImageSet(s.image_paths, s.image_pids, transform, image_cache=caches[split])
        for i in range(len(plain)):
            assert torch.equal(plain[i]["images"], cached[i]["images"])


def test_rows_hold_the_resized_decoded_images(data, tmp_path):
    cache = ensure_image_cache(data, SIZE, tmp_path)["train"]
    paths = split_image_paths(data, "train")
    assert len(cache) == len(paths) == len({s.image_id for s in data.train})
    header, offset = read_header(cache.path)
    assert offset % 4096 == 0 and header["count"] == len(paths)
    assert header["fingerprint"] == data.fingerprint and header["image_size"] == list(SIZE)
    assert os.path.getsize(cache.path) == offset + len(paths) * 3 * SIZE[0] * SIZE[1]
    for p in paths[:5]:
        assert torch.equal(cache.image(cache.row(p)), resize_image(load_image(p), SIZE))


def test_up_to_date_cache_is_reused(data, tmp_path, capsys):
    first = ensure_image_cache(data, SIZE, tmp_path)["train"]
    assert first.built
    mtime = first.path.stat().st_mtime_ns
    again = ensure_image_cache(data, SIZE, tmp_path)["train"]
    assert not again.built and again.path.stat().st_mtime_ns == mtime
    # another image size is another file, the first one stays
    other = ensure_image_cache(data, (32, 16), tmp_path)["train"]
    assert other.built and other.path != first.path and first.path.stat().st_mtime_ns == mtime


def test_rebuilt_when_the_annotation_changes(tmp_path, capsys):
    root = tmp_path / "data"
    data = make_data(root)
    cache_dir = tmp_path / "cache"
    ensure_image_cache(data, SIZE, cache_dir)
    ann = Path(data.annotation_file)
    records = json.loads(ann.read_text())
    records[0]["captions"][0] += " and a new detail"
    ann.write_text(json.dumps(records))
    changed = load_pedes("CUHK-PEDES", root)
    assert changed.fingerprint != data.fingerprint
    with pytest.raises(StaleCache, match="another version of the dataset"):
        ImageCache.open(cache_file(cache_dir, "CUHK-PEDES", "train", SIZE), changed, "train", SIZE)
    capsys.readouterr()
    cache = ensure_image_cache(changed, SIZE, cache_dir)["train"]
    assert cache.built and read_header(cache.path)[0]["fingerprint"] == changed.fingerprint
    assert "another version of the dataset" in capsys.readouterr().err


def test_rebuilt_when_an_image_is_replaced(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    ensure_image_cache(data, SIZE, cache_dir)
    victim, donor = split_image_paths(data, "train")[:2]
    Path(victim).write_bytes(Path(donor).read_bytes())  # same annotation, other pixels
    capsys.readouterr()
    cache = ensure_image_cache(data, SIZE, cache_dir)["train"]
    assert cache.built and "other image files" in capsys.readouterr().err
    assert torch.equal(cache.image(cache.row(victim)), resize_image(load_image(donor), SIZE))


@pytest.mark.parametrize("damage,message", [
    (lambda p: os.truncate(p, os.path.getsize(p) - 100), "truncated"),
    (lambda p: os.truncate(p, 20), "truncated"),
    (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, say" * 50), "not an iclf image cache"),
    (lambda p: p.write_bytes(b"ICLFIMC1" + (9).to_bytes(8, "little") + b"{not json"),
     "not an iclf image cache"),
    (lambda p: p.write_bytes(b""), "not an iclf image cache"),
])
def test_truncated_or_foreign_file_is_rebuilt_with_a_message(data, tmp_path, capsys, monkeypatch,
                                                             damage, message):
    path = ensure_image_cache(data, SIZE, tmp_path)["train"].path
    damage(path)
    with pytest.raises(StaleCache, match=message):
        read_header(path)
    mapped = []
    real_memmap = np.memmap
    monkeypatch.setattr(
        image_cache.np, "memmap",
        lambda f, *a, **k: mapped.append(os.path.getsize(f)) or real_memmap(f, *a, **k))
    capsys.readouterr()
    cache = ensure_image_cache(data, SIZE, tmp_path)["train"]
    err = capsys.readouterr().err
    assert cache.built and message in err and "rebuilding" in err
    # the damaged file was never mapped: the one mapping is of the new, whole file
    assert mapped == [os.path.getsize(path)]
    first = split_image_paths(data, "train")[0]
    assert torch.equal(cache.image(0), resize_image(load_image(first), SIZE))


def test_auto_falls_back_to_decoding_when_the_cache_cannot_be_written(tmp_path, capsys):
    root = tmp_path / "data"
    data = make_data(root)
    (root / ".iclf-cache").write_text("a file where the cache directory would go")
    assert train_image_cache(data, SIZE, "auto", root) is None
    assert "image cache off for this run" in capsys.readouterr().err
    with pytest.raises(ImageCacheError, match="cannot build the image cache"):
        train_image_cache(data, SIZE, str(root / ".iclf-cache"), root)
    assert train_image_cache(data, SIZE, "off", root) is None


def test_concurrent_callers_build_once(data, tmp_path):
    results = []

    def build():
        results.append(ensure_image_cache(data, SIZE, tmp_path)["train"].built)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, True]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_pickled_cache_maps_again_and_refuses_a_replaced_file(data, tmp_path):
    cache = ensure_image_cache(data, SIZE, tmp_path)["train"]
    copy = pickle.loads(pickle.dumps(cache))
    assert torch.equal(copy.image(3), cache.image(3))
    stale = pickle.loads(pickle.dumps(cache))
    os.truncate(cache.path, 100)
    ensure_image_cache(data, SIZE, tmp_path)  # rebuilt: a new file under the same name
    with pytest.raises(ImageCacheError, match="replaced while in use"):
        stale.image(0)


def test_config_field():
    base = ROOT / "experiments" / "synthetic.yaml"
    assert load_config(base).data.image_cache == "auto"
    # YAML reads a bare off/on as a boolean
    assert load_config(base, ["data.image_cache=off"]).data.image_cache == "off"
    assert load_config(base, ["data.image_cache=on"]).data.image_cache == "auto"
    assert load_config(base, ["data.image_cache='off'"]).data.image_cache == "off"
    assert load_config(base, ["data.image_cache=/x/y"]).data.image_cache == "/x/y"
    with pytest.raises(ConfigError, match="data.image_cache"):
        load_config(base, ["data.image_cache=' '"])
    with pytest.raises(ConfigError, match="data.image_cache"):
        load_config(base, ["data.image_cache=3"])


def test_cli_builds_then_reports_up_to_date(tmp_path, capsys):
    from iclf.cli import main

    root = tmp_path / "data"
    make_data(root)
    argv = ["data", "cache", "--dataset", "CUHK-PEDES", "--root", str(root), "--image-size", "64",
            "32", "--splits", "train", "test", "--workers", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["train", "test"]
    assert all("built" in line for line in out)
    assert str(root / ".iclf-cache" / "CUHK-PEDES-train-64x32.u8") in out[0]
    assert main(argv) == 0
    assert all("up to date" in line for line in capsys.readouterr().out.splitlines())


def test_cli_from_an_experiment_config(tmp_path, capsys):
    from iclf.cli import main

    # the synthetic default: the dataset is generated first, the cache goes where training reads it
    over = [f"data.root={tmp_path}", "data.synthetic={ids: 10, images_per_id: 2, seed: 0}",
            f"data.image_cache={tmp_path / 'c'}"]
    assert main(["data", "cache", str(ROOT / "experiments" / "synthetic.yaml"), *over,
                 "--workers", "0"]) == 0
    assert "CUHK-PEDES-train-128x64.u8" in capsys.readouterr().out
    assert (tmp_path / "c" / "CUHK-PEDES-train-128x64.u8").is_file()


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "CUHK-PEDES"], "both --dataset and --root"),
    (["--dataset", "CUHK-PEDES", "--root", "/nonexistent"], "/nonexistent"),
    (["x.yaml", "--dataset", "CUHK-PEDES"], "not both"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, message, capsys):
    from iclf.cli import main

    assert main(["data", "cache", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
