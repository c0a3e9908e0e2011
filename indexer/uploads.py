"""Files uploaded into a collection: stored content-addressed under ``<collection>/uploads/``, never at a user path,
and deleted again when no database row references them (a duplicate, an undecodable upload, a removed image)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from indexer.errors import CollectionError
from indexer.store import MetadataStore
from models.atomic import atomic_write_bytes
from training.data.base import IMAGE_EXTENSIONS

_SUFFIX = re.compile(r"^\.[a-z0-9]{1,5}$")


def store_upload(directory: Path, data: bytes, suffix: str) -> Path:
    """Write uploaded bytes to ``uploads/<sha256[:2]>/<sha256><suffix>`` (content-addressed, no user path)."""
    suffix = suffix.lower()
    if not _SUFFIX.match(suffix) or suffix not in IMAGE_EXTENSIONS:
        raise CollectionError(f"upload suffix {suffix!r} refused; expected one of {sorted(IMAGE_EXTENSIONS)}")
    digest = hashlib.sha256(data).hexdigest()
    path = directory / "uploads" / digest[:2] / f"{digest}{suffix}"
    if not path.is_file():
        atomic_write_bytes(path, data)
    return path


def discard_unreferenced(directory: Path, store: MetadataStore, paths: Iterable[str | Path]) -> int:
    """Delete files under ``uploads/`` (our own copies) that no database row references; returns how many.

    Files outside ``uploads/`` (a user's own dataset) are never touched."""
    uploads = (directory / "uploads").resolve()
    candidates = {Path(p).resolve() for p in paths}
    removed = 0
    for path in sorted(p for p in candidates if p.is_relative_to(uploads) and p.is_file()):
        if not store.ids_for_paths([str(path)]):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
