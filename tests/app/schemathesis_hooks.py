"""schemathesis hooks for tests/app/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Generated file fields are random bytes, which only ever reach the 415/422 answers, and which schemathesis would
call valid (the schema cannot say "a decodable image"). The ``binary`` format strategy below puts real, decodable
images (PNG, JPEG, WebP, GIF, BMP, grey, RGBA, tiny, EXIF-rotated) in every file field meant to be valid, so the
search, classify and upload paths run to the end and their 200/201 answers are checked against the schema;
mutated bodies keep schemathesis's own bytes. ``filter_case`` drops the few "invalid" bodies that multipart cannot
tell from valid ones.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.transport.serialization import Binary

FILE_FIELDS = ("image", "images")


def _encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _images() -> list[bytes]:
    rng = np.random.default_rng(11)
    out = []
    for i, (size, mode, fmt) in enumerate(
        [
            ((24, 24), "RGB", "PNG"),
            ((40, 30), "RGB", "JPEG"),
            ((16, 48), "L", "PNG"),
            ((20, 20), "RGBA", "PNG"),
            ((64, 64), "RGB", "WEBP"),
            ((8, 8), "RGB", "GIF"),
            ((300, 200), "RGB", "JPEG"),
            ((1, 1), "RGB", "BMP"),
        ]
    ):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(pixels).convert(mode)
        exif = Image.Exif()
        if fmt == "JPEG" and i % 2:
            exif[0x0112] = 6  # rotated: EXIF orientation on the strict JPEG path
        out.append(_encode(img, fmt, exif=exif.tobytes()) if fmt == "JPEG" else _encode(img, fmt))
    return out


# Binary: how schemathesis itself carries generated file contents (a plain bytes value would fail its schema
# validation, making the case look invalid).
IMAGES = [Binary(data) for data in _images()]


SCALAR_FIELDS = ("image", "k", "split", "exclude_duplicates")


# Every file field (``format: binary``) of a case meant to be valid holds one of these; negative cases still get
# schemathesis's own mutations of the field.
schemathesis.openapi.format("binary", st.sampled_from(IMAGES))


def _mode(case: Any) -> str | None:
    meta = getattr(case, "meta", None)
    return str(meta.generation.mode) if meta is not None else None


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: Any) -> bool:
    """Drop the "invalid" bodies that multipart/form-data cannot tell from valid ones: a single-value field
    turned into a list of at most one element is that element (or nothing) on the wire, and metadata turned into
    a list of objects is the documented one-object-per-image form."""
    body = case.body
    if not isinstance(body, dict):
        return True
    if _mode(case) == "positive":
        # One `labels` value per image: a constraint between two fields that JSON Schema cannot state (the 422 for
        # a mismatch is tested in tests/app/test_images.py).
        labels, images = body.get("labels"), body.get("images")
        return not (isinstance(labels, list) and isinstance(images, list) and len(labels) != len(images))
    if _mode(case) != "negative":
        return True
    for name in SCALAR_FIELDS:
        if isinstance(body.get(name), list) and len(body[name]) <= 1:
            return False
    # The integers 0 and 1 are, as form text, two of the spellings of a boolean.
    if body.get("exclude_duplicates") in (0, 1) and not isinstance(body.get("exclude_duplicates"), bool):
        return False
    metadata = body.get("metadata")
    return not (isinstance(metadata, list) and all(isinstance(item, dict) for item in metadata))
