"""The decoded-image cache: each image of a dataset split decoded and resized once, for all trials.

Decoding JPEGs is most of what a data-loader worker does (bench/data_pipeline.py). This module
decodes and resizes every image of one split once, into one file per (dataset split, image size)
holding the uint8 array ``[N, 3, H, W]`` that the pipeline has right before augmentation
(:func:`iclf.data.transforms.resize_image` of :func:`iclf.data.transforms.load_image`). Training
memory-maps it read-only, so the trials of a sweep on one machine share one copy through the page
cache, and runs only the random steps (:meth:`TrainTransform.from_resized`) on its rows: an epoch
gives bit-identical batches from the cache and from the JPEGs.

File layout (``<dir>/<dataset>-<split>-<H>x<W>.u8``)::

    8 bytes   magic b"ICLFIMC1"
    8 bytes   header length, little-endian
    header    UTF-8 JSON, space-padded so that the array starts at a multiple of 4096
    array     uint8, C order, count x 3 x H x W

The header records what the array was made from: the dataset name and fingerprint (sha256 of its
annotation file, :func:`iclf.data.pedes.load_pedes`), the split, the image size, count, dtype and
shape, the images in row order (paths relative to the dataset directory), a digest of those images'
sizes and modification times, and the torch/torchvision versions (the resize kernel is theirs). A
file whose header differs from what the loaded dataset needs is rebuilt, never used; a truncated or
foreign file is rebuilt with a message, never read. Files are written to a temporary name and
renamed into place, under a lock, so concurrent trials build a missing cache once and a reader never
sees half a file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from iclf.data.transforms import load_image, resize_image
from iclf.files import ChunkedWriter, lock_beside

MAGIC = b"ICLFIMC1"
FORMAT_VERSION = 1
ALIGN = 4096
SUFFIX = ".u8"
AUTO_DIRNAME = ".iclf-cache"
SPLITS = ("train", "val", "test")
_MAX_HEADER = 1 << 30


class ImageCacheError(OSError):
    """The cache cannot be built or used (unwritable directory, no space, file changed in use)."""


class StaleCache(Exception):
    """An existing cache file that must not be read; the message says why."""


def cache_file(cache_dir: str | os.PathLike[str], dataset: str, split: str,
               image_size: Sequence[int]) -> Path:
    """``<cache_dir>/<dataset>-<split>-<H>x<W>.u8``."""
    h, w = (int(s) for s in image_size)
    return Path(cache_dir) / f"{dataset}-{split}-{h}x{w}{SUFFIX}"


def cache_dir_for(setting: str, data_root: str | os.PathLike[str]) -> Path | None:
    """The directory ``data.image_cache`` names: None for ``off``, ``<data.root>/.iclf-cache`` for
    ``auto``, else the path itself."""
    if setting == "off":
        return None
    if setting == "auto":
        return Path(data_root).expanduser().resolve() / AUTO_DIRNAME
    return Path(setting).expanduser().resolve()


def split_image_paths(data: Any, split: str) -> list[str]:
    """The distinct image files of ``split`` of a loaded :class:`PedesData`, in row order
    (training images by ``image_id``, evaluation images in gallery order)."""
    if split == "train":
        paths = [s.image_path for s in sorted(data.train, key=lambda s: s.image_id)]
    elif split in ("val", "test"):
        paths = list(getattr(data, split).image_paths)
    else:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return list(dict.fromkeys(paths))


def expected_header(data: Any, split: str, image_size: Sequence[int]) -> dict[str, Any]:
    """The header a valid cache of ``split`` of ``data`` at ``image_size`` has (without layout)."""
    import torchvision

    h, w = (int(s) for s in image_size)
    paths = split_image_paths(data, split)
    rel = [os.path.relpath(p, data.root) for p in paths]
    digest = hashlib.sha256()
    for r, p in zip(rel, paths):
        st = os.stat(p)
        digest.update(f"{r}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"format": FORMAT_VERSION, "dataset": data.name, "split": split,
            "fingerprint": data.fingerprint, "image_size": [h, w], "count": len(paths),
            "dtype": "uint8", "shape": [len(paths), 3, h, w], "images": rel,
            "images_digest": digest.hexdigest(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "resize": "bilinear, antialias"}


def _layout(header: dict[str, Any]) -> tuple[bytes, int]:
    """Encoded header block (magic, length, padded JSON) and the array's byte offset."""
    body = json.dumps(header, sort_keys=True).encode()
    offset = -(-(16 + len(body)) // ALIGN) * ALIGN
    body += b" " * (offset - 16 - len(body))
    return MAGIC + len(body).to_bytes(8, "little") + body, offset


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """The header and array offset of a cache file; StaleCache if it is not a whole cache file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 16 or head[:8] != MAGIC:
            raise StaleCache("not an iclf image cache (wrong magic bytes)")
        length = int.from_bytes(head[8:], "little")
        if length > min(size - 16, _MAX_HEADER):
            raise StaleCache("truncated (the header is cut off)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise StaleCache("not an iclf image cache (unreadable header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise StaleCache("not an iclf image cache of this version")
    offset = 16 + length
    try:
        expected_size = offset + int(np.prod(header["shape"]))
    except (KeyError, TypeError, ValueError):
        raise StaleCache("not an iclf image cache (no array shape)") from None
    if size != expected_size:
        raise StaleCache(f"truncated or padded: {size:,} bytes on disk, the header says "
                         f"{expected_size:,}")
    return header, offset


class ImageCache:
    """A read-only, memory-mapped cache file: row ``i`` is image ``i`` of :attr:`paths`.

    Picklable: a copy in another process maps the same file again (and refuses it if the file was
    replaced meanwhile). In a forked DataLoader worker the parent's mapping is shared.
    """

    def __init__(self, path: str | os.PathLike[str], paths: Sequence[str], header: dict[str, Any],
                 offset: int) -> None:
        self.path = Path(path)
        self.paths = list(paths)
        self.header = header
        self.offset = offset
        self.shape = tuple(int(s) for s in header["shape"])
        self.image_size = (self.shape[2], self.shape[3])
        self._rows = {p: i for i, p in enumerate(self.paths)}
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self.built = False  # True when this process has just written the file
        self._array: np.ndarray | None = None
        self._map()

    @classmethod
    def open(cls, path: str | os.PathLike[str], data: Any, split: str,
             image_size: Sequence[int]) -> ImageCache:
        """Open ``path`` if it is a whole cache of ``split`` of ``data`` at ``image_size``;
        StaleCache (saying why) otherwise, FileNotFoundError if it is absent."""
        header, offset = read_header(path)
        want = expected_header(data, split, image_size)
        for key in ("dataset", "split", "image_size", "dtype", "shape", "fingerprint", "images",
                    "images_digest", "torch", "torchvision", "resize"):
            if header.get(key) != want[key]:
                raise StaleCache(_difference(key, header.get(key), want[key]))
        return cls(path, split_image_paths(data, split), header, offset)

    def _map(self) -> None:
        st = os.stat(self.path)
        if (st.st_dev, st.st_ino) != self._identity:
            raise ImageCacheError(f"{self.path}: the image cache file was replaced while in use")
        self._array = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset,
                                shape=self.shape)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return self.shape[0]

    def row(self, path: str) -> int:
        """The row of image file ``path`` (absolute, as the loader gives it)."""
        try:
            return self._rows[path]
        except KeyError:
            raise KeyError(f"{path} is not in the image cache {self.path}") from None

    def image(self, row: int) -> torch.Tensor:
        """Row ``row`` as a uint8 ``[3, H, W]`` tensor (a copy: augmentation may write to it)."""
        if self._array is None:
            self._map()
        return torch.from_numpy(np.array(self._array[row]))


def _difference(key: str, found: Any, wanted: Any) -> str:
    if key == "fingerprint":
        return "built for another version of the dataset (its annotation file changed)"
    if key in ("images", "images_digest"):
        return "built from other image files (images added, removed, replaced or touched)"
    if key in ("torch", "torchvision"):
        return f"built with {key} {found}, this is {wanted}"
    return f"built for {key} {found}, this run needs {wanted}"


class _Resized(Dataset):
    def __init__(self, paths: Sequence[str], size: tuple[int, int]) -> None:
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = resize_image(load_image(self.paths[index]), self.size)
        if image.dtype != torch.uint8 or image.shape[0] != 3:
            raise ValueError(f"{self.paths[index]}: decoded to {image.dtype} {tuple(image.shape)}")
        return image


def build_image_cache(path: str | os.PathLike[str], data: Any, split: str,
                      image_size: Sequence[int], *, num_workers: int = 0,
                      progress: bool = False) -> ImageCache:
    """Decode and resize every image of ``split`` into ``path`` (atomically) and open it."""
    path = Path(path)
    size = (int(image_size[0]), int(image_size[1]))
    header = expected_header(data, split, size)
    block, offset = _layout(header)
    total = offset + int(np.prod(header["shape"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < total + (64 << 20):
        raise ImageCacheError(f"{path.parent}: {total / 2**30:.2f} GiB needed for the image cache "
                              f"of {data.name} {split}, {free / 2**30:.2f} GiB free")
    paths = split_image_paths(data, split)
    loader = DataLoader(_Resized(paths, size), batch_size=32, num_workers=num_workers,
                        collate_fn=torch.stack)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    try:
        from tqdm import tqdm

        with open(tmp, "wb") as f, tqdm(total=len(paths), unit="img", disable=not progress,
                                        desc=f"image cache {data.name} {split}") as bar:
            out = ChunkedWriter(f)
            out.write(block)
            for batch in loader:
                out.write(batch.numpy())
                bar.update(len(batch))
            f.flush()
            os.fsync(f.fileno())
        if tmp.stat().st_size != total:
            raise ImageCacheError(f"{tmp}: wrote {tmp.stat().st_size:,} bytes, expected {total:,}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _say(f"image cache: {len(paths):,} images of {data.name} {split} at {size[0]}x{size[1]} "
         f"written to {path} ({total / 2**20:,.1f} MiB, {time.perf_counter() - t0:.1f} s)")
    cache = ImageCache(path, paths, header, offset)
    cache.built = True
    return cache


def ensure_image_cache(data: Any, image_size: Sequence[int], cache_dir: str | os.PathLike[str], *,
                       splits: Sequence[str] = ("train",), num_workers: int = 0,
                       progress: bool | None = None) -> dict[str, ImageCache]:
    """The caches of ``splits`` of ``data`` at ``image_size`` under ``cache_dir``, built where
    absent, stale (the dataset, its images or the image size changed), truncated or foreign.

    Call it once before trials start (the sweep driver, ``iclf data cache``); every trial then opens
    the same files. Concurrent callers build a missing file once (a lock per file). Splits without
    images are left out of the result. Raises ImageCacheError when the directory is not writable or
    lacks the space.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    out: dict[str, ImageCache] = {}
    for split in splits:
        if not split_image_paths(data, split):
            continue
        path = cache_file(cache_dir, data.name, split, image_size)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with lock_beside(path):
                try:
                    out[split] = ImageCache.open(path, data, split, image_size)
                    continue
                except FileNotFoundError:
                    pass
                except StaleCache as e:
                    _say(f"image cache {path}: {e}; rebuilding it")
                out[split] = build_image_cache(path, data, split, image_size,
                                               num_workers=num_workers, progress=progress)
        except ImageCacheError:
            raise
        except OSError as e:
            raise ImageCacheError(f"{path}: cannot build the image cache: "
                                  f"{e.strerror or e}") from None
    return out


def train_image_cache(data: Any, image_size: Sequence[int], setting: str,
                      data_root: str | os.PathLike[str], *, num_workers: int = 0,
                      progress: bool | None = None) -> ImageCache | None:
    """What training reads for ``data.image_cache=setting``: None for ``off``; otherwise the
    training split's cache, built first when needed. With ``auto`` a cache that cannot be built
    (read-only data directory, no space) is reported in one line and training decodes the JPEGs
    instead (same batches, slower); with an explicit directory that is an ImageCacheError."""
    cache_dir = cache_dir_for(setting, data_root)
    if cache_dir is None:
        return None
    try:
        caches = ensure_image_cache(data, image_size, cache_dir, splits=("train",),
                                    num_workers=num_workers, progress=progress)
    except ImageCacheError as e:
        if setting != "auto":
            raise
        _say(f"image cache off for this run: {e} (set data.image_cache to a writable directory, "
             f"or off)")
        return None
    return caches.get("train")


def _say(message: str) -> None:
    print(f"[iclf] {message}", file=sys.stderr, flush=True)
