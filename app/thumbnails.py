"""Thumbnails cached on disk, keyed by the image's sha256 and the thumbnail size.

The key is the content hash, never a name from a request, so the cache can only ever hold files for images that
are in the collection. Files are written through a temporary name and renamed, so concurrent requests for the same
thumbnail never see half a file (at worst both render it).
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

from PIL import Image

from models import open_image
from models.preprocessing import to_mode
from msir_core.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MEDIA_TYPES = {".jpg": "image/jpeg", ".png": "image/png"}


class ThumbnailCache:
    def __init__(self, directory: Path, size: int, max_pixels: int) -> None:
        self.directory = directory
        self.size = size
        self.max_pixels = max_pixels

    def _stem(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.directory / sha256[:2] / f"{sha256}-{self.size}"

    def cached(self, sha256: str) -> tuple[Path, str] | None:
        stem = self._stem(sha256)
        for suffix, media_type in MEDIA_TYPES.items():
            path = stem.with_suffix(suffix)
            if path.is_file():
                return path, media_type
        return None

    def discard(self, sha256: str) -> None:
        """Drop the cached thumbnail of a removed image (absent is fine)."""
        stem = self._stem(sha256)
        for suffix in MEDIA_TYPES:
            stem.with_suffix(suffix).unlink(missing_ok=True)

    def get(self, sha256: str, source: Path) -> tuple[Path, str]:
        """Path and media type of the thumbnail of ``source`` (rendered and stored on first use).

        Raises ``models.ImageDecodeError`` when the source cannot be decoded and ``OSError`` when it is missing
        or the cache cannot be written.
        """
        hit = self.cached(sha256)
        if hit is not None:
            return hit
        img = open_image(source, max_pixels=self.max_pixels)
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        if _has_alpha(img):
            # Keep transparency: PNG.
            img.convert("RGBA").save(buffer, format="PNG", optimize=True)
            suffix = ".png"
        else:
            to_mode(img, 3).save(buffer, format="JPEG", quality=85, optimize=True)
            suffix = ".jpg"
        target = self._stem(sha256).with_suffix(suffix)
        atomic_write_bytes(target, buffer.getvalue())
        logger.debug("rendered thumbnail %s", target)
        return target, MEDIA_TYPES[suffix]


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
