"""Identity-balanced P x K sampler (method.md 3.1: IRRA's optional RandomIdentitySampler)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class IdentitySampler(Sampler[int]):
    """Yield dataset indices in consecutive groups of ``p * k``: ``p`` identities, ``k`` items each.

    Per epoch, each identity's items are shuffled (drawn with replacement up to ``k`` when it has
    fewer) and cut into chunks of ``k``; an incomplete last chunk is dropped. Batches then take one
    chunk from each of ``p`` distinct identities chosen at random among those with chunks left,
    until fewer than ``p`` remain. Use with ``DataLoader(batch_size=p * k)``. The order depends only
    on ``(seed, epoch)``; call :meth:`set_epoch` each epoch.
    """

    def __init__(self, pids: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be at least 1, got p={p}, k={k}")
        groups: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            groups.setdefault(int(pid), []).append(index)
        if len(groups) < p:
            raise ValueError(f"the identity sampler needs at least p={p} identities, "
                             f"the data has {len(groups)}")
        self.groups = [np.asarray(groups[pid], dtype=np.int64) for pid in sorted(groups)]
        self.p, self.k, self.seed = p, k, seed
        self.epoch = 0
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks: list[list[np.ndarray]] = []
        for members in self.groups:
            if len(members) < self.k:
                members = rng.choice(members, size=self.k, replace=True)
            else:
                members = rng.permutation(members)
            n = len(members) // self.k
            chunks.append([members[i * self.k:(i + 1) * self.k] for i in range(n)])
        out: list[int] = []
        available = [i for i, c in enumerate(chunks) if c]
        while len(available) >= self.p:
            chosen = rng.choice(len(available), size=self.p, replace=False)
            for j in chosen:
                out.extend(int(x) for x in chunks[available[j]].pop())
            available = [i for i in available if chunks[i]]
        self._cache = (self.epoch, out)
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())
