"""Image decoding and the train/test image pipelines (method.md 3.1).

Images are decoded with ``torchvision.io.decode_image`` from the file's bytes straight into a
uint8 ``[3, H, W]`` tensor (RGB), and transformed with ``torchvision.transforms.v2.functional`` on
tensors: the resize runs on uint8, the float conversion and normalisation are one fused pass, and
pad + random crop is one shifted copy. No PIL.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

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


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, antialiased resize to ``size`` (H, W): the first step of both pipelines.

    On a uint8 image the result is uint8. Both transforms and the decoded-image cache
    (:mod:`iclf.data.cache`) call this one function, so a cached image is bit-identical to what the
    pipeline computes from the JPEG.
    """
    return F.resize(image, [int(size[0]), int(size[1])],
                    interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


class TrainTransform(torch.nn.Module):
    """The training augmentation of method.md 3.1 on a uint8 ``[3, h, w]`` tensor.

    In order: bilinear (antialiased) resize to ``size``; horizontal flip with ``flip_prob``;
    zero-pad ``padding`` px on every side and crop ``size`` at a uniformly random offset (done as
    one shifted copy into a zero canvas, which is the same operation); scale to [0, 1] float32 and
    normalise with ``mean``/``std``; random erasing with ``erasing_prob`` (area 0.02-0.4 of the
    image, log-uniform aspect 0.3-3.3, up to 10 tries to fit) filled with ``mean``, the IRRA fill
    value given in normalised space. Steps set to off are skipped. Random draws use torch's global
    generator, which DataLoader seeds per worker.

    ``forward`` is :meth:`resize` (deterministic, uint8 in and out) then :meth:`from_resized` (all
    the random steps); the decoded-image cache stores the former's output, so training from the
    cache runs only the latter and draws the same random numbers.

    The steps call ``torchvision.transforms.v2.functional`` directly: the per-call dispatch of the
    ``v2`` transform classes costs more than the arithmetic at these image sizes (see
    bench/data_pipeline.py).
    """

    def __init__(
        self,
        size: tuple[int, int],
        *,
        flip: bool = True,
        pad_crop: bool = True,
        random_erasing: bool = True,
        normalize: bool = True,
        padding: int = 10,
        flip_prob: float = 0.5,
        erasing_prob: float = 0.5,
        erasing_scale: tuple[float, float] = (0.02, 0.4),
        erasing_ratio: tuple[float, float] = (0.3, 3.3),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding must be non-negative, got {padding}")
        for name, prob in (("flip_prob", flip_prob), ("erasing_prob", erasing_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {prob}")
        self.size = (int(size[0]), int(size[1]))
        self.flip = flip
        self.pad_crop = pad_crop
        self.random_erasing = random_erasing
        self.padding = padding
        self.flip_prob = flip_prob
        self.erasing_prob = erasing_prob
        self.erasing_scale = erasing_scale
        self.erasing_log_ratio = (math.log(erasing_ratio[0]), math.log(erasing_ratio[1]))
        self.to_float = ToNormalizedFloat(mean, std, normalize)
        self.fill = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.from_resized(self.resize(image))

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """The deterministic first step: ``image`` resized to ``size`` (uint8 stays uint8)."""
        return resize_image(image, self.size)

    def from_resized(self, x: torch.Tensor) -> torch.Tensor:
        """Every step after the resize (the random augmentation and normalisation) on a uint8
        ``[3, H, W]`` tensor already at ``size``, e.g. a row of the decoded-image cache."""
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"expected an image resized to {self.size}, got {tuple(x.shape[-2:])}")
        if self.flip and torch.rand(1).item() < self.flip_prob:
            x = F.horizontal_flip(x)
        if self.pad_crop and self.padding > 0:
            dy, dx = (torch.randint(0, 2 * self.padding + 1, (2,)) - self.padding).tolist()
            x = shift(x, dy, dx)
        x = self.to_float(x)
        if self.random_erasing and torch.rand(1).item() < self.erasing_prob:
            box = self._erase_box(x.shape[-2], x.shape[-1])
            if box is not None:
                x = F.erase(x, *box, self.fill, inplace=True)
        return x

    def _erase_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """Top, left, height, width of a random rectangle (Zhong et al., Random Erasing)."""
        for _ in range(10):
            u = torch.rand(2).tolist()
            area = height * width * (self.erasing_scale[0]
                                     + u[0] * (self.erasing_scale[1] - self.erasing_scale[0]))
            lo, hi = self.erasing_log_ratio
            aspect = math.exp(lo + u[1] * (hi - lo))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if h < height and w < width:
                top = int(torch.randint(0, height - h + 1, (1,)).item())
                left = int(torch.randint(0, width - w + 1, (1,)).item())
                return top, left, h, w
        return None


class EvalTransform(torch.nn.Module):
    """The evaluation pipeline (method.md 3.1): resize, scale to [0, 1], normalise."""

    def __init__(self, size: tuple[int, int], *, normalize: bool = True,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.to_float = ToNormalizedFloat(mean, std, normalize)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.from_resized(self.resize(image))

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        return resize_image(image, self.size)

    def from_resized(self, x: torch.Tensor) -> torch.Tensor:
        """Scale and normalise a uint8 ``[3, H, W]`` tensor already at ``size``."""
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"expected an image resized to {self.size}, got {tuple(x.shape[-2:])}")
        return self.to_float(x)


class ToNormalizedFloat(torch.nn.Module):
    """uint8 -> float32 in [0, 1], then ``(x - mean) / std`` when ``normalize``; one fused pass."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], normalize: bool = True) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError("mean and std need one value per channel and std > 0, "
                             f"got {mean}, {std}")
        m = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        sd = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        self.normalize = normalize
        self.scale = 1.0 / (255.0 * sd) if normalize else torch.full_like(sd, 1.0 / 255.0)
        self.offset = m / sd if normalize else torch.zeros_like(m)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image tensor, got {image.dtype}")
        return image.to(torch.float32).mul_(self.scale).sub_(self.offset)


def shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved by (dy, dx) px inside a zero canvas of the same size.

    Equals zero-padding by p and cropping at offset (p + dy, p + dx) for |dy|, |dx| <= p.
    """
    height, width = image.shape[-2:]
    out = torch.zeros_like(image)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    out[..., max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)] = \
        image[..., max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)]
    return out


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
) -> TrainTransform:
    """The training augmentation of method.md 3.1 for ``image_size`` (H, W), each step switchable.

    Input uint8 ``[3, h, w]`` (from :func:`load_image`); output float32 ``[3, H, W]``.
    """
    return TrainTransform(_size(image_size), flip=flip, pad_crop=pad_crop,
                          random_erasing=random_erasing, normalize=normalize, padding=padding,
                          flip_prob=flip_prob, erasing_prob=erasing_prob, mean=mean, std=std)


def build_test_transform(
    image_size: Sequence[int],
    *,
    normalize: bool = True,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> EvalTransform:
    """The evaluation pipeline (method.md 3.1): resize, scale to [0, 1], normalise."""
    return EvalTransform(_size(image_size), normalize=normalize, mean=mean, std=std)


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(s) <= 0 for s in image_size):
        raise ValueError("image_size must be (height, width) with positive sides, "
                         f"got {image_size}")
    return int(image_size[0]), int(image_size[1])
