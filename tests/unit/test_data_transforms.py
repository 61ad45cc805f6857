"""Train/test image pipelines (method.md 3.1): shapes, dtypes and that each switch acts."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from iclf.data.transforms import (CLIP_MEAN, CLIP_STD, build_test_transform,
                                  build_train_transform, load_image)

SIZE = (48, 16)


@pytest.fixture()
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 40, 17), generator=g, dtype=torch.uint8)


def test_load_image_gives_uint8_rgb(tmp_path):
    for mode, ext in (("RGB", "jpg"), ("L", "jpg"), ("RGBA", "png"), ("P", "png")):
        path = tmp_path / f"x_{mode}.{ext}"
        Image.new(mode, (13, 29)).save(path)
        x = load_image(path)
        assert x.dtype == torch.uint8 and x.shape == (3, 29, 13)


@pytest.mark.parametrize("flags", [{}, {"flip": False}, {"pad_crop": False},
                                   {"random_erasing": False}, {"normalize": False}])
def test_train_transform_shape_and_dtype(image, flags):
    out = build_train_transform(SIZE, **flags)(image)
    assert out.shape == (3, *SIZE) and out.dtype == torch.float32


def test_test_transform_matches_resize_and_normalise(image):
    out = build_test_transform(SIZE)(image)
    assert out.shape == (3, *SIZE) and out.dtype == torch.float32
    raw = build_test_transform(SIZE, normalize=False)(image)
    assert 0.0 <= raw.min() and raw.max() <= 1.0
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.allclose(out, (raw - mean) / std, atol=1e-5)
    assert torch.equal(out, build_test_transform(SIZE)(image))  # deterministic


def test_train_without_augmentation_equals_test_transform(image):
    plain = build_train_transform(SIZE, flip=False, pad_crop=False, random_erasing=False)
    assert torch.equal(plain(image), build_test_transform(SIZE)(image))


def _outputs(transform, image, n=40):
    torch.manual_seed(0)
    return [transform(image) for _ in range(n)]


def test_flip_switch(image):
    base = build_test_transform(SIZE)(image)
    flipped = base.flip(-1)
    outs = _outputs(build_train_transform(SIZE, pad_crop=False, random_erasing=False), image)
    assert any(torch.equal(o, flipped) for o in outs) and any(torch.equal(o, base) for o in outs)
    outs = _outputs(build_train_transform(SIZE, flip=False, pad_crop=False, random_erasing=False),
                    image)
    assert all(torch.equal(o, base) for o in outs)


def test_pad_crop_shifts_with_black_fill(image):
    outs = _outputs(build_train_transform(SIZE, flip=False, random_erasing=False,
                                          normalize=False), image)
    base = build_test_transform(SIZE, normalize=False)(image)
    assert any(not torch.equal(o, base) for o in outs)
    # a shifted crop leaves a band of zero padding on some border
    borders = [torch.cat([o[:, 0].flatten(), o[:, -1].flatten(), o[:, :, 0].flatten(),
                          o[:, :, -1].flatten()]) for o in outs]
    assert any((b == 0).any() for b in borders)


def test_random_erasing_fills_with_the_mean(image):
    outs = _outputs(build_train_transform(SIZE, flip=False, pad_crop=False), image, n=30)
    base = build_test_transform(SIZE)(image)
    erased = [o for o in outs if not torch.equal(o, base)]
    assert 5 < len(erased) < 25  # p = 0.5
    diff = erased[0] != base
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1).expand_as(base)
    assert torch.allclose(erased[0][diff], mean[diff])


def test_bad_size_refused():
    with pytest.raises(ValueError, match="image_size"):
        build_test_transform((384,))


def test_shift_equals_zero_pad_then_crop(image):
    from torchvision.transforms.v2 import functional as F

    from iclf.data.transforms import shift

    h, w = image.shape[-2:]
    padded = F.pad(image, [10], fill=0)
    for dy in (-10, -3, 0, 7, 10):
        for dx in (-10, -1, 0, 4, 10):
            expected = F.crop(padded, 10 + dy, 10 + dx, h, w)
            assert torch.equal(shift(image, dy, dx), expected)


def test_train_transform_deterministic_under_torch_seed(image):
    tf = build_train_transform(SIZE)
    torch.manual_seed(3)
    a = [tf(image) for _ in range(5)]
    torch.manual_seed(3)
    b = [tf(image) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_non_uint8_input_refused():
    with pytest.raises(TypeError, match="uint8"):
        build_test_transform(SIZE)(torch.zeros(3, 8, 8))
