"""What the sweep driver prepares before any trial starts, and the resources each trial asks Ray
for: real files, a real local Ray instance (with declared GPUs on a machine that has none)."""

from pathlib import Path

import pytest

pytest.importorskip("ray")

from iclf.sweep.spec import load_spec  # noqa: E402
from tiny_sweep import write_tiny_spec  # noqa: E402


def test_driver_builds_the_image_cache_before_trials(tmp_path):
    from iclf.data.cache import cache_file
    from iclf.sweep.tune import prepare_shared_inputs

    spec = load_spec(write_tiny_spec(tmp_path, "prep", "lora.rank: {grid: [0, 4]}"))
    fingerprint = prepare_shared_inputs(spec)
    assert fingerprint
    cache = cache_file(tmp_path / "data" / ".iclf-cache", "CUHK-PEDES", "train", (64, 32))
    assert cache.is_file() and cache.stat().st_size > 3 * 64 * 32
    (tmp_path / "off").mkdir()
    off = load_spec(write_tiny_spec(tmp_path / "off", "prep", "lora.rank: {grid: [0, 4]}"),
                    ["data.image_cache=off"])
    prepare_shared_inputs(off)
    assert (tmp_path / "off" / "data" / "CUHK-PEDES").is_dir()
    assert not (tmp_path / "off" / "data" / ".iclf-cache").exists()
