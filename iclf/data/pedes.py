"""CUHK-PEDES, ICFG-PEDES and RSTPReid in their published on-disk formats (method.md 4).

Each dataset lives in a directory under a common root::

    <root>/CUHK-PEDES/reid_raw.json            + <root>/CUHK-PEDES/imgs/<file_path>
    <root>/ICFG-PEDES/ICFG-PEDES.json          + <root>/ICFG-PEDES/imgs/<file_path>
        (ICFG_PEDES.json, the name in the IRRA README, is accepted too)
    <root>/RSTPReid/data_captions.json         + <root>/RSTPReid/imgs/<img_path>

An annotation file is a JSON list with one record per image: ``id`` (int), the image path
(``file_path``, or ``img_path`` for RSTPReid) relative to ``imgs/``, ``captions`` (a list of
strings) and ``split``. Everything is validated up front; every problem raises
:class:`~iclf.data.errors.DatasetError` naming the file, the record index and the field.

Splits (method.md 4.1-4.4): ``train`` records give one training pair per caption, with the raw
identities remapped to contiguous ids 0..N-1 in ascending raw-id order (never asserted, so custom
splits work). ``val`` and ``test`` are evaluation sets: a gallery of every image of the split
with its pid and every caption as a query with the pid of its image (raw ids; only equality
matters). Unknown split values are refused (method.md 4.1 sends them to val; this project does
not). ICFG-PEDES has no val split: a seeded, deterministic fraction of its training identities is
held out as the validation set.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from iclf.data.errors import DatasetError

DATASETS: tuple[str, ...] = ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid")
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_DIR = "imgs"
DEFAULT_VAL_FRACTION = 0.1
_SHOW_MISSING = 5


@dataclass(frozen=True)
class DatasetFormat:
    """How one dataset is stored: annotation file name(s), path field, allowed split values."""

    name: str
    annotation_files: tuple[str, ...]
    path_field: str
    splits: tuple[str, ...]
    captions_per_image: int  # typical count, used by the synthetic generator only


FORMATS: dict[str, DatasetFormat] = {
    "CUHK-PEDES": DatasetFormat("CUHK-PEDES", ("reid_raw.json",), "file_path",
                                ("train", "val", "test"), 2),
    "ICFG-PEDES": DatasetFormat("ICFG-PEDES", ("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path",
                                ("train", "test"), 1),
    "RSTPReid": DatasetFormat("RSTPReid", ("data_captions.json",), "img_path",
                              ("train", "val", "test"), 2),
}


@dataclass(frozen=True)
class TrainSample:
    """One training pair (method.md 3.1): one caption of one image.

    ``pid`` is the contiguous training id, ``image_id`` the running index of the training image,
    ``image_path`` absolute.
    """

    pid: int
    image_id: int
    image_path: str
    caption: str


@dataclass(frozen=True)
class EvalSet:
    """An evaluation split (method.md 4.4): a gallery of images and text queries, with raw pids."""

    image_paths: tuple[str, ...]
    image_pids: tuple[int, ...]
    captions: tuple[str, ...]
    caption_pids: tuple[int, ...]

    def stats(self) -> dict[str, int]:
        return {"ids": len(set(self.image_pids)), "images": len(self.image_paths),
                "captions": len(self.captions)}


@dataclass(frozen=True)
class PedesData:
    """A loaded dataset: training pairs, the val and test evaluation sets, and provenance."""

    name: str
    root: str  # the dataset directory, <root>/<name>
    annotation_file: str
    train: tuple[TrainSample, ...]
    num_train_ids: int
    train_raw_ids: tuple[int, ...]  # train_raw_ids[pid] is the raw id of contiguous id pid
    val: EvalSet
    test: EvalSet
    fingerprint: str  # sha256 of the dataset name and the annotation file bytes

    def stats(self) -> dict[str, dict[str, int]]:
        """Identities, images and captions per split, counted from what was loaded."""
        train_images = len({s.image_id for s in self.train})
        return {"train": {"ids": self.num_train_ids, "images": train_images,
                          "captions": len(self.train)},
                "val": self.val.stats(), "test": self.test.stats()}


@dataclass(frozen=True)
class _Record:
    index: int
    pid: int
    rel_path: str
    captions: tuple[str, ...]
    split: str


def expected_layout(name: str, root: str | os.PathLike[str] = "<root>") -> str:
    """A sentence saying what to put where for dataset ``name``."""
    fmt = _format(name)
    base = os.path.join(os.fspath(root), name)
    files = " or ".join(os.path.join(base, f) for f in fmt.annotation_files)
    return (f"put the annotation file at {files} and the images under "
            f"{os.path.join(base, IMAGE_DIR)}/ (the JSON field '{fmt.path_field}' is relative "
            f"to {IMAGE_DIR}/)")


def find_annotation_file(name: str, root: str | os.PathLike[str]) -> str:
    """The path of ``name``'s annotation file under ``root``; DatasetError if absent."""
    fmt = _format(name)
    root = os.fspath(root)
    base = os.path.join(root, name)
    if not os.path.isdir(root):
        raise DatasetError(root, None, None,
                           f"dataset root directory does not exist; {expected_layout(name, root)}")
    found = [os.path.join(base, f) for f in fmt.annotation_files
             if os.path.isfile(os.path.join(base, f))]
    if not found:
        hint = ""
        if os.path.basename(os.path.normpath(root)) == name:
            hint = f" (--root is the directory that contains {name}/, not {name}/ itself)"
        raise DatasetError(base, None, None,
                           f"no annotation file found{hint}; {expected_layout(name, root)}")
    if len(found) > 1:
        with open(found[0], "rb") as a, open(found[1], "rb") as b:
            if a.read() != b.read():
                raise DatasetError(found[1], None, None,
                                   f"both {fmt.annotation_files[0]} and {fmt.annotation_files[1]} "
                                   "exist and differ; keep one")
    return found[0]


def load_pedes(
    name: str,
    root: str | os.PathLike[str],
    *,
    val_fraction: float | None = None,
    split_seed: int = 0,
    verify_images: bool = False,
    progress: bool = False,
) -> PedesData:
    """Load and validate one PEDES dataset (method.md 4).

    Args:
        name: one of :data:`DATASETS`.
        root: the directory that contains ``<name>/``.
        val_fraction: ICFG-PEDES only: the fraction of training identities held out as the
            validation split (default 0.1; 0 gives an empty val set). CUHK-PEDES and RSTPReid
            have an official val split, so any other value than ``None`` or the default is refused.
        split_seed: seed of the ICFG-PEDES identity hold-out.
        verify_images: decode every image up front (otherwise an undecodable image is named when
            it is first read).
        progress: show a progress bar while verifying.
    """
    fmt = _format(name)
    if name == "ICFG-PEDES":
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    else:
        if val_fraction is not None and val_fraction != DEFAULT_VAL_FRACTION:
            raise ValueError(f"val_fraction applies to ICFG-PEDES only; {name} has an official "
                             f"val split (got val_fraction={val_fraction})")
        fraction = 0.0

    ann_file = find_annotation_file(name, root)
    with open(ann_file, "rb") as f:
        raw = f.read()
    records = _parse(raw, ann_file, fmt)
    dataset_dir = os.path.abspath(os.path.dirname(ann_file))
    image_dir = os.path.join(dataset_dir, IMAGE_DIR)
    if not os.path.isdir(image_dir):
        raise DatasetError(image_dir, None, None,
                           f"image directory does not exist; {expected_layout(name, root)}")
    paths = [os.path.join(image_dir, r.rel_path) for r in records]
    _check_files_exist(records, paths, ann_file, fmt.path_field, image_dir)
    if verify_images:
        _verify_images(records, paths, ann_file, fmt.path_field, progress)

    train_records = [r for r in records if r.split == "train"]
    if not train_records:
        raise DatasetError(ann_file, None, "split", "no record has split 'train'")
    val_records = [r for r in records if r.split == "val"]
    if fraction > 0:
        held = holdout_identities([r.pid for r in train_records], fraction, split_seed,
                                  file=ann_file)
        val_records = [r for r in train_records if r.pid in held]
        train_records = [r for r in train_records if r.pid not in held]
    test_records = [r for r in records if r.split == "test"]

    raw_ids = sorted({r.pid for r in train_records})
    contiguous = {raw: i for i, raw in enumerate(raw_ids)}
    train: list[TrainSample] = []
    for image_id, r in enumerate(train_records):
        path = paths[r.index]
        train.extend(TrainSample(contiguous[r.pid], image_id, path, c) for c in r.captions)

    return PedesData(
        name=name,
        root=dataset_dir,
        annotation_file=os.path.abspath(ann_file),
        train=tuple(train),
        num_train_ids=len(raw_ids),
        train_raw_ids=tuple(raw_ids),
        val=_eval_set(val_records, paths),
        test=_eval_set(test_records, paths),
        fingerprint=hashlib.sha256(name.encode() + b"\n" + raw).hexdigest(),
    )


def holdout_identities(ids: Sequence[int], fraction: float, seed: int, *,
                       file: str = "<ids>") -> set[int]:
    """A deterministic, seeded ``fraction`` of the distinct ``ids`` (at least one when > 0)."""
    distinct = sorted(set(ids))
    if fraction <= 0:
        return set()
    count = max(1, round(fraction * len(distinct)))
    if count >= len(distinct):
        raise DatasetError(file, None, "split",
                           f"holding out val_fraction={fraction} of {len(distinct)} training "
                           "identities leaves none for training")
    return set(random.Random(seed).sample(distinct, count))


def _format(name: str) -> DatasetFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def _eval_set(records: Sequence[_Record], paths: Sequence[str]) -> EvalSet:
    captions = [(c, r.pid) for r in records for c in r.captions]
    return EvalSet(
        image_paths=tuple(paths[r.index] for r in records),
        image_pids=tuple(r.pid for r in records),
        captions=tuple(c for c, _ in captions),
        caption_pids=tuple(p for _, p in captions),
    )


def _parse(raw: bytes, file: str, fmt: DatasetFormat) -> list[_Record]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(file, None, None,
                           f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(file, None, None,
                           f"malformed JSON: not UTF-8 text ({e.reason})") from None
    if not isinstance(data, list):
        raise DatasetError(file, None, None,
                           f"expected a JSON list of records, got {_kind(data)}")
    if not data:
        raise DatasetError(file, None, None, "the file contains no records")
    return [_parse_record(i, rec, file, fmt) for i, rec in enumerate(data)]


def _parse_record(index: int, rec: object, file: str, fmt: DatasetFormat) -> _Record:
    if not isinstance(rec, dict):
        raise DatasetError(file, index, None, f"expected a JSON object, got {_kind(rec)}")

    def field(key: str) -> object:
        if key not in rec:
            raise DatasetError(file, index, key, "missing field")
        return rec[key]

    pid = field("id")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise DatasetError(file, index, "id", f"expected an integer, got {_kind(pid)}")
    if pid < 0:
        raise DatasetError(file, index, "id", f"expected a non-negative integer, got {pid}")

    path = field(fmt.path_field)
    if not isinstance(path, str):
        raise DatasetError(file, index, fmt.path_field, f"expected a string, got {_kind(path)}")
    rel_path = _relative_path(path, file, index, fmt.path_field)

    captions = field("captions")
    if not isinstance(captions, list):
        raise DatasetError(file, index, "captions",
                           f"expected a list of strings, got {_kind(captions)}")
    if not captions:
        raise DatasetError(file, index, "captions",
                           "empty list: an image needs at least one caption")
    for j, c in enumerate(captions):
        if not isinstance(c, str):
            raise DatasetError(file, index, f"captions[{j}]", f"expected a string, got {_kind(c)}")
        if not c.strip():
            raise DatasetError(file, index, f"captions[{j}]", "empty caption")

    split = field("split")
    if not isinstance(split, str):
        raise DatasetError(file, index, "split", f"expected a string, got {_kind(split)}")
    if split not in fmt.splits:
        note = ("; ICFG-PEDES has no val split, validation identities are held out from train"
                if fmt.name == "ICFG-PEDES" else "")
        raise DatasetError(file, index, "split",
                           f"unknown split {split!r} (allowed: {', '.join(fmt.splits)}{note})")
    return _Record(index, pid, rel_path, tuple(captions), split)


_DRIVE = re.compile(r"^[A-Za-z]:")


def _relative_path(value: str, file: str, index: int, field: str) -> str:
    """Normalise an image path and refuse any that could leave ``imgs/``.

    Backslashes count as separators (annotation files written on Windows).
    """
    if not value.strip():
        raise DatasetError(file, index, field, "empty path")
    if "\x00" in value:
        raise DatasetError(file, index, field, "path contains a NUL character")
    p = value.replace("\\", "/")
    if p.startswith("/") or _DRIVE.match(p):
        raise DatasetError(file, index, field,
                           f"absolute path {value!r} refused: paths must be relative to "
                           f"{IMAGE_DIR}/")
    parts = [s for s in p.split("/") if s not in ("", ".")]
    if ".." in parts:
        raise DatasetError(file, index, field,
                           f"path {value!r} refused: '..' would escape the dataset root")
    if not parts:
        raise DatasetError(file, index, field, f"path {value!r} names no file")
    return "/".join(parts)


def _check_files_exist(records: Sequence[_Record], paths: Sequence[str], file: str, field: str,
                       image_dir: str) -> None:
    missing = [(r.index, r.rel_path) for r, p in zip(records, paths) if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(rel for _, rel in missing[:_SHOW_MISSING])
        more = ", ..." if len(missing) > _SHOW_MISSING else ""
        raise DatasetError(file, missing[0][0], field,
                           f"{len(missing)} of {len(records)} image files missing under "
                           f"{image_dir}/ (first: {shown}{more})")


def _verify_images(records: Sequence[_Record], paths: Sequence[str], file: str, field: str,
                   progress: bool) -> None:
    from tqdm import tqdm

    from iclf.data.transforms import load_image

    for r, p in tqdm(list(zip(records, paths)), desc="verify images", unit="img",
                     disable=not progress):
        try:
            load_image(p)
        except DatasetError as e:
            raise DatasetError(file, r.index, field, f"image {p}: {e.message}") from None


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{names.get(type(value), type(value).__name__)} ({shown})"
