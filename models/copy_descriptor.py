"""The copy descriptor (ours): a 64-float unit vector per image made to find copies of one photo, not its class.

The class-retrieval embedding makes distinct images of one class close, so it cannot tell a re-encoded copy from
another photo of a cat. This descriptor is computed from the decoded pixels alone:

1. the image (any mode, via :func:`models.preprocessing.to_mode`) shrunk to 32x32 RGB by box averaging (a resize,
   a JPEG re-encode and a small crop barely change so coarse an image);
2. grey levels pooled to 16x16 and two opponent colours (red-green, yellow-blue) pooled to 8x8, each added to its
   mirror image and halved in width (horizontal flips give the same values);
3. the grey part has its mean removed and is L2-normalised (brightness and contrast changes), the colour part has
   its mean removed (a global colour cast);
4. a learned linear map, fitted by ``benchmarks/fit_copy_descriptor.py`` on CIFAR-10 *training* images and their
   augmented copies (Radenović et al.'s learned discriminative whitening): whitening by the covariance of
   copy-minus-original differences (directions a copy moves along are shrunk), then the 64 leading principal
   directions of the whitened originals (directions distinct images differ along), and L2 normalisation.

The map lives in ``copy_descriptor.npz`` beside this file (arrays ``mean`` and ``projection``, read with
``allow_pickle=False``); :data:`VERSION` names it so stored descriptors of another map are recognised.
``benchmarks/duplicates.py`` calibrates the cosine threshold and measures precision/recall on CIFAR-10 *test* images.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from models.preprocessing import to_mode

SIDE = 32  # the pixels the descriptor sees: SIDE x SIDE RGB
GREY_SIDE = 16
COLOUR_SIDE = 8
RAW_DIM = GREY_SIDE * GREY_SIDE // 2 + 2 * COLOUR_SIDE * COLOUR_SIDE // 2  # 128 grey + 64 colour, after mirroring
DIM = 64
PROJECTION_FILE = Path(__file__).with_name("copy_descriptor.npz")
VERSION = "copy-v1"  # changes whenever the features or the fitted map change (stored descriptors are then stale)
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def jpeg_copy(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def centre_crop(img: Image.Image, share: float) -> Image.Image:
    """``share`` of the width and height cut off, half on each side."""
    w, h = img.size
    dx, dy = round(w * share / 2), round(h * share / 2)
    return img.crop((dx, dy, w - dx, h - dy))


# The copies a user calls duplicates of a photo: what the map is fitted to ignore (benchmarks/fit_copy_descriptor.py)
# and what the threshold is calibrated and measured on (benchmarks/duplicates.py).
COPIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg90": lambda im: jpeg_copy(im, 90),
    "jpeg70": lambda im: jpeg_copy(im, 70),
    "jpeg50": lambda im: jpeg_copy(im, 50),
    "resize_up_2x": lambda im: im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC),
    "resize_down_0.75x": lambda im: im.resize(
        (round(im.width * 0.75), round(im.height * 0.75)), Image.Resampling.LANCZOS
    ),
    "crop_10pct": lambda im: centre_crop(im, 0.10),
    "hflip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "colour": lambda im: ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.08)).enhance(1.1),
}


def small_rgb(img: Image.Image) -> np.ndarray:
    """``uint8 [SIDE, SIDE, 3]``: the only pixels the descriptor uses (box-averaged, aspect ratio not kept)."""
    rgb = to_mode(img, 3)
    if rgb.width >= 4 * SIDE and rgb.height >= 4 * SIDE:
        # Integer box reduction first: exact averaging at a fraction of a full-size resize's cost.
        rgb = rgb.reduce(min(rgb.width, rgb.height) // (2 * SIDE))
    return np.asarray(rgb.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.uint8)


def raw_features(small: np.ndarray) -> np.ndarray:
    """``uint8 [..., SIDE, SIDE, 3]`` -> ``float32 [..., RAW_DIM]``: the mirror-symmetric, normalised features that
    the learned map projects (steps 2-3 of the module's description)."""
    x = small.astype(np.float32) / 255.0
    lead = x.shape[:-3]
    grey = x @ GREY_WEIGHTS
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    opponent = np.stack([r - g, 0.5 * (r + g) - b], axis=-3)  # [..., 2, SIDE, SIDE]
    f = SIDE // GREY_SIDE
    grey = grey.reshape(*lead, GREY_SIDE, f, GREY_SIDE, f).mean(axis=(-3, -1))
    c = SIDE // COLOUR_SIDE
    colour = opponent.reshape(*lead, 2, COLOUR_SIDE, c, COLOUR_SIDE, c).mean(axis=(-3, -1))
    grey = (grey + grey[..., ::-1])[..., : GREY_SIDE // 2].reshape(*lead, -1)
    colour = (colour + colour[..., ::-1])[..., : COLOUR_SIDE // 2].reshape(*lead, -1)
    grey = grey - grey.mean(axis=-1, keepdims=True)
    grey = grey / np.maximum(np.linalg.norm(grey, axis=-1, keepdims=True), 1e-6)
    colour = colour - colour.mean(axis=-1, keepdims=True)
    return np.concatenate([grey, colour], axis=-1).astype(np.float32)


@cache
def load_projection(path: Path = PROJECTION_FILE) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [RAW_DIM], projection [RAW_DIM, DIM])`` of the shipped map (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        mean = np.asarray(data["mean"], np.float32)
        projection = np.asarray(data["projection"], np.float32)
    if mean.shape != (RAW_DIM,) or projection.shape != (RAW_DIM, DIM):
        raise ValueError(f"{path}: expected mean ({RAW_DIM},) and projection ({RAW_DIM}, {DIM}), got "
                         f"{mean.shape} and {projection.shape}")  # fmt: skip
    return mean, projection


def project(raw: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """Raw features ``[..., RAW_DIM]`` -> unit descriptors ``float32 [..., DIM]``."""
    y = (raw - mean) @ projection
    return (y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def describe_small(small: np.ndarray) -> np.ndarray:
    """Descriptors of ``uint8 [..., SIDE, SIDE, 3]`` arrays (what :func:`small_rgb` returns)."""
    return project(raw_features(small), *load_projection())


def copy_descriptor(img: Image.Image) -> np.ndarray:
    """The copy descriptor of one decoded image: ``float32 [DIM]``, unit length."""
    return describe_small(small_rgb(img))


def fit_projection(originals: np.ndarray, copies: np.ndarray, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """The learned discriminative whitening of raw features: ``originals [N, RAW_DIM]`` and ``copies [N, K,
    RAW_DIM]`` (K copies of each original). Returns ``(mean, projection [RAW_DIM, dim])``."""
    diff = (copies - originals[:, None, :]).reshape(-1, originals.shape[1]).astype(np.float64)
    within = diff.T @ diff / len(diff) + 1e-6 * np.eye(originals.shape[1])  # ridge: a flat direction stays finite
    values, vectors = np.linalg.eigh(within)
    whiten = vectors @ np.diag(values**-0.5) @ vectors.T
    mean = originals.astype(np.float64).mean(axis=0)
    white = (originals - mean) @ whiten
    between = white.T @ white / len(white)
    _, principal = np.linalg.eigh(between)  # ascending eigenvalues: the last columns are the leading directions
    projection = whiten @ principal[:, ::-1][:, :dim]
    return mean.astype(np.float32), projection.astype(np.float32)
