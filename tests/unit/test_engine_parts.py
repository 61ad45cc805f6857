"""Schedule, parameter groups, checkpoints and RNG state of the engine."""

import io
import math
import os
import random

import numpy as np
import pytest
import torch

from iclf.engine import checkpoint as ckpt
from iclf.engine.optim import build_param_groups
from iclf.engine.schedule import warmup_cosine_factor
from iclf.engine.seed import get_rng_state, seed_everything, set_rng_state
from iclf.files import ChunkedWriter


@pytest.mark.parametrize("epoch,lr", [(1, 1.0e-6), (2, 2.8e-6), (3, 4.6e-6), (4, 6.4e-6), (5, 8.2e-6),
                                      (6, 1.0e-5), (20, 8.48e-6), (30, 5.99e-6), (40, 3.19e-6),
                                      (50, 9.5e-7), (60, 8.2e-9)])
def test_schedule_matches_method_table(epoch, lr):
    f = warmup_cosine_factor(epoch - 1, total_epochs=60, warmup_epochs=5, warmup_factor=0.1)
    assert 1e-5 * f == pytest.approx(lr, rel=0.02)


def test_param_groups_follow_method_3_2():
    from iclf.models.iclf import build_iclf_model

    model = build_iclf_model("tiny", None, (64, 32), num_classes=5, fusion_style="irra",
                             fusion_depth=1, fusion_heads=4, lora=None, need_mlm=True,
                             need_itm=True, need_id=True)
    groups = build_param_groups(backbone=model.backbone, new_modules=model.new_modules(),
                                temp=model.temp, adapters=[], lr=1e-5, weight_decay=4e-5,
                                lr_factor_new=5, lr_factor_bias=2, lr_factor_adapter=1,
                                weight_decay_bias=0.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == 1e-5 and by_name["backbone"]["weight_decay"] == 4e-5
    assert by_name["backbone_bias"]["lr"] == 2e-5 and by_name["backbone_bias"]["weight_decay"] == 0
    assert by_name["new"]["lr"] == 5e-5 and by_name["new_bias"]["weight_decay"] == 0
    assert by_name["temp"]["params"] == [model.temp]
    # every trainable parameter is in exactly one group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    # handles, not names: the classifier weight is "new", the patch embedding is "backbone"
    new_ids = {id(p) for p in by_name["new"]["params"]}
    assert id(model.classifier.weight) in new_ids if hasattr(model.classifier, "weight") else True
    assert id(model.backbone.visual.conv1.weight) in {id(p) for p in by_name["backbone"]["params"]}


def test_param_groups_put_lora_in_adapters():
    from iclf.models.iclf import build_iclf_model
    from iclf.models.lora import LoraSettings, adapter_parameters

    model = build_iclf_model("tiny", None, (64, 32), num_classes=5, fusion_style="irra",
                             fusion_depth=1, fusion_heads=4, lora=LoraSettings(rank=4, alpha=8),
                             need_mlm=False, need_itm=True, need_id=False)
    adapters = adapter_parameters(model.backbone)
    groups = build_param_groups(backbone=model.backbone, new_modules=model.new_modules(),
                                temp=model.temp, adapters=adapters, lr=1e-5, weight_decay=4e-5,
                                lr_factor_new=5, lr_factor_bias=2, lr_factor_adapter=20,
                                weight_decay_bias=0.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["adapters"]["lr"] == pytest.approx(2e-4)
    assert {id(p) for p in by_name["adapters"]["params"]} == {id(p) for p in adapters}


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "c" / "state.pt"
    ckpt.save_atomic({"w": torch.ones(2), "epoch": 3, "rng": get_rng_state()}, path)
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]  # no temporary file left
    loaded = ckpt.load(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], torch.ones(2))
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="bad.pt"):
        ckpt.load(tmp_path / "bad.pt")


def test_a_checkpoint_damaged_inside_is_refused_not_loaded(tmp_path):
    """A file whose bytes changed after writing (a torn write after a power loss, a bad disk)
    must not load as other weights: its zip records' CRC-32 no longer match."""
    path = ckpt.save_atomic({"w": torch.randn(1000, 100), "epoch": 3}, tmp_path / "state.pt")
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(bytes(4096))  # zeros in the middle of the tensor data; the zip directory intact
    with pytest.raises(ckpt.CheckpointError, match=r"state\.pt: .*CRC"):
        ckpt.load(path)
    assert "CRC" in ckpt.unreadable(tmp_path)


def test_checkpoints_are_written_in_pieces_and_byte_identical(tmp_path):
    """save_atomic hands the kernel at most WRITE_CHUNK bytes per write (large single writes were
    20x slower on the machines measured) and writes what torch.save writes to a stream."""
    from iclf.files import WRITE_CHUNK

    obj = {"big": torch.randn(3 * WRITE_CHUNK // 4 + 5), "small": torch.ones(3), "epoch": 2}
    plain = io.BytesIO()
    torch.save(obj, plain)
    sizes = []

    class Recording(io.BytesIO):
        def write(self, data):
            sizes.append(len(memoryview(data).cast("B")))
            return super().write(data)

    recorded = Recording()
    torch.save(obj, ChunkedWriter(recorded))
    assert max(sizes) <= WRITE_CHUNK and len(sizes) > 3
    assert recorded.getvalue() == plain.getvalue()
    path = ckpt.save_atomic(obj, tmp_path / "c" / "state.pt", durable=False)
    assert path.read_bytes() == plain.getvalue()
    loaded = ckpt.load(path)
    assert torch.equal(loaded["big"], obj["big"]) and loaded["epoch"] == 2


def test_a_spare_file_is_overwritten_in_place_and_cut_to_length(tmp_path):
    """save_atomic(reuse=spare): the spare (a sweep's pruned state) becomes the new file, the same
    inode (its cached pages written again), holding exactly what a fresh save holds, even when the
    spare was longer; without a spare it writes a new file."""
    obj = {"w": torch.randn(4096), "epoch": 3}
    fresh = ckpt.save_atomic(obj, tmp_path / "fresh" / "state.pt", durable=False)
    spare = tmp_path / "c" / ckpt.SPARE_FILE
    spare.parent.mkdir()
    spare.write_bytes(os.urandom(fresh.stat().st_size * 3))
    inode = spare.stat().st_ino
    path = ckpt.save_atomic(obj, tmp_path / "c" / ckpt.STATE_FILE, durable=False, reuse=spare)
    assert not spare.exists()
    assert path.stat().st_ino == inode
    assert path.read_bytes() == fresh.read_bytes()
    assert torch.equal(ckpt.load(path)["w"], obj["w"])
    again = ckpt.save_atomic(obj, path, durable=True, reuse=spare)  # no spare now: a new file
    assert again.stat().st_ino != inode and again.read_bytes() == fresh.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [ckpt.STATE_FILE]


def test_rng_state_round_trip(tmp_path):
    seed_everything(3)
    state = get_rng_state()
    ckpt.save_atomic(state, tmp_path / "rng.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(ckpt.load(tmp_path / "rng.pt"))
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b and all(math.isfinite(x) for x in a)
