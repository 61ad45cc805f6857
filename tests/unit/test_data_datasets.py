"""Torch datasets over a generated dataset: batch keys, masking switch, epoch determinism."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from iclf.data.datasets import ImageSet, TextSet, TrainPairs, collate, tokenize_all
from iclf.data.pedes import load_pedes
from iclf.data.synthetic import write_synthetic
from iclf.data.transforms import build_test_transform, build_train_transform
from iclf.tokenizer import EOT_ID, MASK_ID, SOT_ID, Tokenizer

SIZE = (64, 32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_synthetic(root, "RSTPReid", ids=6, images_per_id=2, seed=0)
    return load_pedes("RSTPReid", root)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer()


def pairs(data, tokenizer, **kw) -> TrainPairs:
    return TrainPairs(data.train, build_train_transform(SIZE), tokenizer, **kw)


def test_train_batch_keys_shapes_and_dtypes(data, tokenizer):
    ds = pairs(data, tokenizer)
    assert len(ds) == len(data.train)
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert set(batch) == {"images", "caption_ids", "mlm_ids", "mlm_labels", "pids", "image_ids"}
    assert batch["images"].shape == (4, 3, *SIZE) and batch["images"].dtype == torch.float32
    for key in ("caption_ids", "mlm_ids", "mlm_labels"):
        assert batch[key].shape == (4, 77) and batch[key].dtype == torch.long
    assert batch["pids"].shape == (4,) and batch["pids"].dtype == torch.long
    assert batch["pids"].tolist() == [s.pid for s in data.train[:4]]
    assert batch["image_ids"].tolist() == [s.image_id for s in data.train[:4]]
    assert (batch["mlm_ids"][:, 0] == SOT_ID).all()
    assert ((batch["mlm_labels"] != 0).sum(1) >= 1).all()


def test_mask_global_text_switch(data, tokenizer):
    clean = tokenize_all(tokenizer, [s.caption for s in data.train]).long()
    faithful = pairs(data, tokenizer, mask_global_text=True)
    separate = pairs(data, tokenizer, mask_global_text=False)
    for i in range(len(data.train)):
        a, b = faithful[i], separate[i]
        assert torch.equal(a["caption_ids"], a["mlm_ids"])  # published aliasing
        assert torch.equal(b["caption_ids"], clean[i])  # clean caption for the global losses
        assert torch.equal(a["mlm_ids"], b["mlm_ids"])
        assert torch.equal(a["mlm_labels"], b["mlm_labels"])
    assert any(not torch.equal(faithful[i]["caption_ids"], clean[i])
               for i in range(len(data.train)))


def test_masking_settings_reach_the_items(data, tokenizer):
    ds = pairs(data, tokenizer, mask_rate=1.0, mask_prob=1.0, random_prob=0.0)
    item = ds[0]
    ids = tokenize_all(tokenizer, [data.train[0].caption])[0].long()
    real = (ids > 0) & (ids < MASK_ID)
    assert (item["mlm_ids"][real] == MASK_ID).all()
    assert torch.equal(item["mlm_labels"][real], ids[real])
    assert item["mlm_ids"][ids == EOT_ID].item() == EOT_ID
    with pytest.raises(ValueError):
        pairs(data, tokenizer, mask_prob=0.9, random_prob=0.2)


def test_masking_is_a_function_of_seed_epoch_and_index(data, tokenizer):
    a, b = pairs(data, tokenizer, seed=3), pairs(data, tokenizer, seed=3)
    n = len(data.train)
    first = [a.mask(i)[1] for i in range(n)]
    # a resumed run (fresh dataset, same epoch) masks identically, in any order
    assert all(torch.equal(first[i], b.mask(i)[1]) for i in reversed(range(n)))
    a.set_epoch(1)
    second = [a.mask(i)[1] for i in range(n)]
    assert any(not torch.equal(x, y) for x, y in zip(first, second))
    a.set_epoch(0)
    assert all(torch.equal(first[i], a.mask(i)[1]) for i in range(n))
    other = pairs(data, tokenizer, seed=4)
    assert any(not torch.equal(first[i], other.mask(i)[1]) for i in range(n))


def test_workers_give_the_same_masks(data, tokenizer):
    ds = pairs(data, tokenizer, seed=1)
    ds.set_epoch(2)
    serial = next(iter(DataLoader(ds, batch_size=8, collate_fn=collate)))
    parallel = next(iter(DataLoader(ds, batch_size=8, collate_fn=collate, num_workers=2)))
    assert torch.equal(serial["mlm_ids"], parallel["mlm_ids"])
    assert torch.equal(serial["mlm_labels"], parallel["mlm_labels"])


def test_eval_sets(data, tokenizer):
    images = ImageSet(data.test.image_paths, data.test.image_pids, build_test_transform(SIZE))
    texts = TextSet(data.test.captions, data.test.caption_pids, tokenizer)
    ib = collate([images[i] for i in range(len(images))])
    tb = collate([texts[i] for i in range(len(texts))])
    assert ib["images"].shape == (len(images), 3, *SIZE)
    assert ib["pids"].tolist() == list(data.test.image_pids)
    assert tb["caption_ids"].shape == (len(texts), 77) and tb["caption_ids"].dtype == torch.long
    assert tb["pids"].tolist() == list(data.test.caption_pids)
    assert torch.equal(tb["caption_ids"], tokenizer(list(data.test.captions)))
    with pytest.raises(ValueError):
        ImageSet(["a"], [1, 2], build_test_transform(SIZE))


def test_tokenize_all_deduplicates_but_keeps_order(tokenizer):
    caps = ["a red coat", "blue jeans", "a red coat"]
    table = tokenize_all(tokenizer, caps)
    assert table.dtype == torch.int32 and table.shape == (3, 77)
    assert torch.equal(table.long(), tokenizer(caps))
