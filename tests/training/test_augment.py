"""Batched augmentation: shapes and dtypes kept, flips are exact, each sample draws its own transform."""

from __future__ import annotations

import pytest
import torch

from training.augment import BatchAugment, random_crop, random_cutout, random_flip, random_rotate
from training.config import AugmentConfig


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int = 64, c: int = 3, h: int = 12, w: int = 12, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randint(0, 256, (b, c, h, w), generator=gen(123))
    return x.to(dtype)


def disc(b: int, h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    r = torch.sqrt(yy**2 + xx**2)
    img = (r < min(h, w) / 4).float() * 100.0
    return img.expand(b, 1, h, w).clone()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_pipeline_keeps_shape_and_dtype(dtype: torch.dtype) -> None:
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, rotate_degrees=15, crop_padding=2, cutout=4, cutout_p=0.5)
    aug = BatchAugment(cfg, gen())
    x = batch(dtype=dtype)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert aug.enabled and not BatchAugment(AugmentConfig(), gen()).enabled
    assert torch.equal(BatchAugment(AugmentConfig(), gen())(x), x)
    # Same generator seed, same result; another seed, another result.
    assert torch.equal(BatchAugment(cfg, gen())(x), y)
    assert not torch.equal(BatchAugment(cfg, gen(1))(x), y)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flips_are_exact_and_per_sample(dtype: torch.dtype) -> None:
    x = batch(dtype=dtype)
    assert torch.equal(random_flip(x, 1.0, -1, gen()), x.flip(-1))
    assert torch.equal(random_flip(x, 1.0, -2, gen()), x.flip(-2))
    assert torch.equal(random_flip(x, 0.0, -1, gen()), x)
    y = random_flip(x, 0.5, -1, gen())
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert torch.all(flipped ^ kept)  # every sample is exactly one of the two
    assert 10 < int(flipped.sum()) < 54  # and the coin is per sample


def test_rotation_is_rigid_and_random_per_sample() -> None:
    # A centred disc is unchanged by any rotation, on square and non-square images alike (a rotation done in
    # normalised coordinates without the aspect correction would squash it into an ellipse).
    for h, w in ((16, 16), (16, 32)):
        x = disc(8, h, w)
        y = random_rotate(x, 180.0, 1.0, gen())
        assert (y - x).abs().mean() < 3.0, (h, w)
    x = batch(b=16)
    y = random_rotate(x, 15.0, 1.0, gen())
    assert y.shape == x.shape
    diffs = torch.stack([(y[i] - x[i]).abs().mean() for i in range(16)])
    assert torch.all(diffs > 0) and diffs.std() > 0  # each sample its own angle
    assert torch.equal(random_rotate(x, 15.0, 0.0, gen()), x)
    u = random_rotate(x.to(torch.uint8), 15.0, 1.0, gen())
    assert u.dtype == torch.uint8


def test_random_crop_is_a_shift_with_zero_fill() -> None:
    x = batch(b=32, h=8, w=8) + 1  # no zeros in the source
    p = 2
    y = random_crop(x, p, gen())
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(y[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert matches, i
        offsets.add(matches[0])
    assert len(offsets) > 5


def test_cutout_zeroes_one_square_per_sample() -> None:
    x = torch.ones(32, 3, 10, 10)
    y = random_cutout(x, 4, 1.0, gen())
    assert y.shape == x.shape
    holes = (y[:, 0] == 0).sum(dim=(1, 2))
    assert torch.all(holes >= 4) and torch.all(holes <= 16)  # clipped at the border, never bigger
    assert torch.all(y[:, 0] == y[:, 1])  # every channel erased alike
    assert len({tuple(torch.nonzero(y[i, 0] == 0)[0].tolist()) for i in range(32)}) > 5
    assert torch.equal(random_cutout(x, 4, 0.0, gen()), x)
