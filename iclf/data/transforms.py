"""Image decoding and the train/test image pipelines (method.md 3.1).

Images are decoded with ``torchvision.io.decode_image`` from the file's bytes straight into a
uint8 ``[3, H, W]`` tensor (RGB), and transformed with ``torchvision.transforms.v2`` on tensors,
which avoids PIL and the float conversion of ``ToTensor`` before the resize.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from iclf.data.errors import DatasetError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read and decode an image file as a uint8 RGB tensor ``[3, H, W]``.

    Raises DatasetError naming the file when it cannot be read or decoded.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(path, None, None, f"cannot read image: {e.strerror or e}") from None
    if not data:
        raise DatasetError(path, None, None, "cannot decode image: the file is empty")
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                            mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(path, None, None, f"cannot decode image: {reason}") from None


def build_train_transform(
    image_size: Sequence[int],
    *,
    flip: bool = True,
    pad_crop: bool = True,
    random_erasing: bool = True,
    normalize: bool = True,
    padding: int = 10,
    flip_prob: float = 0.5,
    erasing_prob: float = 0.5,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> v2.Compose:
    """The training augmentation of method.md 3.1, each step switchable.

    Resize to ``image_size`` (H, W) bilinearly, horizontal flip, zero-pad ``padding`` px and
    random-crop back to ``image_size``, scale to [0, 1] float32, normalise with ``mean``/``std``,
    then random erasing (area 0.02-0.4, aspect 0.3-3.3) filled with ``mean`` (the IRRA fill value,
    given in normalised space). Input: uint8 ``[3, h, w]``; output float32 ``[3, H, W]``.
    """
    size = _size(image_size)
    steps: list[torch.nn.Module] = [v2.Resize(size, interpolation=v2.InterpolationMode.BILINEAR,
                                              antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=flip_prob))
    if pad_crop:
        steps.append(v2.RandomCrop(size, padding=padding, fill=0, padding_mode="constant"))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    if random_erasing:
        steps.append(v2.RandomErasing(p=erasing_prob, scale=(0.02, 0.4), ratio=(0.3, 3.3),
                                      value=list(mean)))
    return v2.Compose(steps)


def build_test_transform(
    image_size: Sequence[int],
    *,
    normalize: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> v2.Compose:
    """The evaluation pipeline (method.md 3.1): resize, scale to [0, 1], normalise."""
    steps: list[torch.nn.Module] = [
        v2.Resize(_size(image_size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
        raise ValueError(f"image_size must be (height, width) with positive sides, got {image_size}")
    return int(image_size[0]), int(image_size[1])
