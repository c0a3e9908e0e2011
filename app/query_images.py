"""An uploaded query image on its way to the model: decoded within the limits, hashed and preprocessed (with the
time each step took), the HTTP error a decoding failure becomes, and the sample images the warm-up decodes."""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass

import numpy as np

from app.errors import ApiError
from models import ImageDecodeError, ImageTooLargeError, PreprocessSpec, UnsupportedImageError, open_image, to_uint8


@dataclass
class Prepared:
    """A query image ready for the model, with the time each step took."""

    array: np.ndarray  # uint8 [C, H, W]
    sha256: str
    started: float  # perf_counter when the worker thread picked the job up
    decode_s: float
    preprocess_s: float


def prepare_image(data: bytes, spec: PreprocessSpec, max_pixels: int, name: str) -> Prepared:
    """Decode (limits checked), hash and preprocess one uploaded image; raises :class:`ImageDecodeError`."""
    started = time.perf_counter()
    # Large JPEGs are decoded at a reduced DCT scale, never below the model's input size (as the indexer does).
    image = open_image(data, max_pixels=max_pixels, name=name, min_size=max(spec.image_size))
    sha = hashlib.sha256(data).hexdigest()
    decoded = time.perf_counter()
    array = to_uint8(image, spec)
    return Prepared(array, sha, started, decoded - started, time.perf_counter() - decoded)


def sample_image(fmt: str, size: tuple[int, int] | list[int]) -> bytes:
    """A small encoded image (a gradient) in ``fmt``, for the warm-up's decodes and its search."""
    from PIL import Image

    h, w = (int(v) for v in size)
    pixels = np.linspace(0, 255, h * w * 3, dtype=np.float32).reshape(h, w, 3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def decode_error(exc: ImageDecodeError, field_name: str) -> ApiError:
    """415 for formats Pillow cannot read, 413 for too many pixels, 422 for empty/corrupt/truncated images."""
    message = f"form field '{field_name}': {exc}"
    if isinstance(exc, UnsupportedImageError):
        return ApiError(415, "unsupported_image", message)
    if isinstance(exc, ImageTooLargeError):
        return ApiError(413, "image_too_large", message)
    return ApiError(422, "invalid_image", message)
