"""Identity-balanced P x K sampler."""

from __future__ import annotations

from collections import Counter

import pytest

from iclf.data.sampler import IdentitySampler

PIDS = [0] * 9 + [1] * 4 + [2] * 2 + [3] * 6 + [4] * 8 + [5] * 5 + [6] * 1


def batches(sampler, size):
    indices = list(sampler)
    assert len(indices) == len(sampler) and len(indices) % size == 0
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def test_groups_of_p_identities_with_k_samples():
    sampler = IdentitySampler(PIDS, p=3, k=2, seed=0)
    groups = batches(sampler, 6)
    assert len(groups) >= 4
    for batch in groups:
        counts = Counter(PIDS[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {2}


def test_small_identities_are_padded_with_replacement():
    sampler = IdentitySampler(PIDS, p=2, k=4, seed=1)
    seen = Counter(PIDS[i] for i in sampler)
    assert all(v % 4 == 0 for v in seen.values())
    assert len(seen) >= 5


def test_deterministic_per_epoch_and_seed():
    a, b = IdentitySampler(PIDS, 2, 2, seed=5), IdentitySampler(PIDS, 2, 2, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(IdentitySampler(PIDS, 2, 2, seed=6)) != first


def test_invalid_arguments():
    with pytest.raises(ValueError, match="at least p=9"):
        IdentitySampler(PIDS, p=9, k=2)
    with pytest.raises(ValueError):
        IdentitySampler(PIDS, p=0, k=2)
