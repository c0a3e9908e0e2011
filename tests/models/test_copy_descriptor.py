"""The copy descriptor (models.copy_descriptor): copies of a picture stay above the calibrated threshold, distinct
pictures below it; flips give the same descriptor; the learned map loads without pickle and learns invariances."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models import copy_descriptor as cd
from msir_core.retrieval.duplicate_threshold import DEFAULT_THRESHOLD


def picture(seed: int, size: int = 96) -> Image.Image:
    """A synthetic photo: a smooth random colour field (bicubic from 6x6), a few flat rectangles with sharp edges
    (objects), mild noise. Edges matter: fields of smooth blobs only are alike at 32x32 and some pairs of them pass
    the threshold (measured while writing this test), a limit of a descriptor made of so few pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float64)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 20, 2)
        w, h = rng.integers(10, 40, 2)
        img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def test_descriptor_is_a_unit_float32_vector_of_every_mode() -> None:
    img = picture(0)
    for variant in (img, img.convert("L"), img.convert("RGBA"), img.convert("P"), img.resize((7, 5))):
        d = cd.copy_descriptor(variant)
        assert d.shape == (cd.DIM,) and d.dtype == np.float32
        assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5)
    flat = cd.copy_descriptor(Image.new("RGB", (40, 40), (90, 90, 90)))  # no structure: still a finite unit vector
    assert np.isfinite(flat).all() and np.linalg.norm(flat) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", list(cd.COPIES))
def test_a_copy_stays_above_the_threshold(kind: str) -> None:
    for seed in range(4):
        img = picture(seed)
        cosine = float(cd.copy_descriptor(img) @ cd.copy_descriptor(cd.COPIES[kind](img)))
        assert cosine >= DEFAULT_THRESHOLD, (kind, seed, cosine)


def test_a_flip_gives_the_same_descriptor() -> None:
    img = picture(3)  # 96 = 3 x 32: the box reduction of the mirror image is the mirror of the reduction
    flipped = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    np.testing.assert_allclose(cd.copy_descriptor(img), cd.copy_descriptor(flipped), atol=1e-5)


def test_distinct_pictures_stay_below_the_threshold() -> None:
    d = np.stack([cd.copy_descriptor(picture(seed)) for seed in range(40)])
    cosines = d @ d.T
    off_diagonal = cosines[~np.eye(len(d), dtype=bool)]
    assert off_diagonal.max() < DEFAULT_THRESHOLD


def test_the_shipped_map_loads_without_pickle() -> None:
    mean, projection = cd.load_projection()
    assert mean.shape == (cd.RAW_DIM,) and projection.shape == (cd.RAW_DIM, cd.DIM)
    assert np.isfinite(projection).all() and cd.PROJECTION_FILE.stat().st_size < 1_000_000
    with np.load(cd.PROJECTION_FILE, allow_pickle=False) as data:
        assert sorted(data.files) == ["mean", "projection"]


def test_fit_projection_suppresses_the_directions_copies_move_along() -> None:
    rng = np.random.default_rng(0)
    n, d = 2000, 6
    originals = rng.normal(size=(n, d)).astype(np.float32)
    nuisance = np.zeros(d, np.float32)
    nuisance[0] = 1.0  # copies move far along axis 0 only, a little along the others
    copies = originals[:, None, :] + rng.normal(0, 3, (n, 4, 1)) * nuisance + rng.normal(0, 0.05, (n, 4, d))
    mean, projection = cd.fit_projection(originals, copies.astype(np.float32), dim=3)
    assert projection.shape == (d, 3)
    y = cd.project(originals, mean, projection)
    yc = cd.project(copies, mean, projection)
    raw = originals / np.linalg.norm(originals, axis=1, keepdims=True)
    rawc = copies / np.linalg.norm(copies, axis=-1, keepdims=True)
    learned = np.einsum("nd,nkd->nk", y, yc).mean()
    plain = np.einsum("nd,nkd->nk", raw, rawc).mean()
    assert learned > 0.99 > plain
