"""Torch datasets: training pairs with MLM masking, evaluation images and texts (method.md 3.1).

Items are dicts; :func:`collate` stacks them into the batch dict of docs/design.md:
``images [B,3,H,W] float``, ``caption_ids [B,77]``, ``mlm_ids [B,77]``, ``mlm_labels [B,77]``,
``pids [B]``, ``image_ids [B]`` (training); ``images``/``pids`` and ``caption_ids``/``pids``
(evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from iclf.data.masking import check_masking, mask_tokens
from iclf.data.pedes import TrainSample
from iclf.data.transforms import load_image

if TYPE_CHECKING:
    from iclf.data.cache import ImageCache

Tokenize = Callable[[Sequence[str]], torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]
_CHUNK = 4096


def tokenize_all(tokenizer: Tokenize, captions: Sequence[str],
                 progress: bool = False) -> torch.Tensor:
    """Tokenise every caption once (duplicates once), stored compactly as int32 ``[N, 77]``."""
    from tqdm import tqdm

    distinct = list(dict.fromkeys(captions))
    where = {c: i for i, c in enumerate(distinct)}
    chunks = [tokenizer(distinct[i:i + _CHUNK]).to(torch.int32)
              for i in tqdm(range(0, len(distinct), _CHUNK), desc="tokenize", unit="chunk",
                            disable=not progress)]
    if not chunks:
        return torch.zeros(0, 77, dtype=torch.int32)
    table = torch.cat(chunks)
    return table[torch.tensor([where[c] for c in captions], dtype=torch.long)]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for item ``index`` of ``epoch``: a resumed run masks identically."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, epoch, index]).generate_state(
        2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


class TrainPairs(Dataset):
    """One (image, caption) pair per caption, with per-item deterministic MLM masking.

    Masking (method.md 2.3) draws from a generator seeded by ``(seed, epoch, index)``; call
    :meth:`set_epoch` at the start of each epoch. ``mask_global_text=True`` (the published,
    aliased behaviour) gives the global losses the masked caption as ``caption_ids``; ``False``
    gives them the clean caption. ``mlm_ids``/``mlm_labels`` are the masked caption and its labels.

    With ``image_cache`` (:class:`iclf.data.cache.ImageCache` of these samples' images) an item's
    image is the cache row through ``transform.from_resized`` instead of ``transform`` of the
    decoded JPEG: the same tensor, bit for bit, from the same random draws.
    """

    def __init__(
        self,
        samples: Sequence[TrainSample],
        transform: Transform,
        tokenizer: Tokenize,
        *,
        mask_rate: float = 0.15,
        mask_prob: float = 0.8,
        random_prob: float = 0.1,
        mask_global_text: bool = True,
        seed: int = 0,
        progress: bool = False,
        image_cache: ImageCache | None = None,
    ) -> None:
        check_masking(mask_rate, mask_prob, random_prob)
        self.samples = list(samples)
        self.transform = transform
        self.image_cache = image_cache
        self.rows = _cache_rows(image_cache, [s.image_path for s in self.samples], transform)
        self.mask_rate = mask_rate
        self.mask_prob = mask_prob
        self.random_prob = random_prob
        self.mask_global_text = mask_global_text
        self.seed = seed
        self.epoch = 0
        self.tokens = tokenize_all(tokenizer, [s.caption for s in self.samples], progress)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def mask(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(clean_ids, masked_ids, labels)`` of caption ``index`` for the current epoch."""
        ids = self.tokens[index].long()
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, index))
        masked, labels = mask_tokens(ids, generator, self.mask_rate, self.mask_prob,
                                     self.random_prob)
        return ids, masked, labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        ids, masked, labels = self.mask(index)
        if self.image_cache is None:
            image = self.transform(load_image(sample.image_path))
        else:
            image = self.transform.from_resized(self.image_cache.image(self.rows[index]))
        return {
            "images": image,
            "caption_ids": masked if self.mask_global_text else ids,
            "mlm_ids": masked,
            "mlm_labels": labels,
            "pids": torch.tensor(sample.pid, dtype=torch.long),
            "image_ids": torch.tensor(sample.image_id, dtype=torch.long),
        }


class ImageSet(Dataset):
    """Gallery images with their pids (method.md 4.4); from ``image_cache`` as in
    :class:`TrainPairs` when given."""

    def __init__(self, paths: Sequence[str], pids: Sequence[int], transform: Transform, *,
                 image_cache: ImageCache | None = None) -> None:
        if len(paths) != len(pids):
            raise ValueError(f"{len(paths)} image paths but {len(pids)} pids")
        self.paths = list(paths)
        self.pids = list(pids)
        self.transform = transform
        self.image_cache = image_cache
        self.rows = _cache_rows(image_cache, self.paths, transform)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.image_cache is None:
            image = self.transform(load_image(self.paths[index]))
        else:
            image = self.transform.from_resized(self.image_cache.image(self.rows[index]))
        return {"images": image, "pids": torch.tensor(self.pids[index], dtype=torch.long)}


class TextSet(Dataset):
    """Text queries with their pids (method.md 4.4), tokenised once up front."""

    def __init__(self, captions: Sequence[str], pids: Sequence[int], tokenizer: Tokenize,
                 progress: bool = False) -> None:
        if len(captions) != len(pids):
            raise ValueError(f"{len(captions)} captions but {len(pids)} pids")
        self.pids = list(pids)
        self.tokens = tokenize_all(tokenizer, list(captions), progress)

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"caption_ids": self.tokens[index].long(),
                "pids": torch.tensor(self.pids[index], dtype=torch.long)}


def _cache_rows(cache: ImageCache | None, paths: Sequence[str], transform: Transform) -> list[int]:
    """The cache row of each path; checks that the cache fits the transform."""
    if cache is None:
        return []
    size = getattr(transform, "size", None)
    if not hasattr(transform, "from_resized") or tuple(size or ()) != cache.image_size:
        raise ValueError(f"the image cache {cache.path} holds images at {cache.image_size}; the "
                         f"transform needs a from_resized() step at that size, got "
                         f"{type(transform).__name__} at {size}")
    return [cache.row(p) for p in paths]


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of item dicts into one batch dict (same keys, leading batch dimension)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
