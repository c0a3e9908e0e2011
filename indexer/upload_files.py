"""Files uploaded into a collection: stored content-addressed under ``<collection>/uploads/``, never at a user path,
and deleted again when no database row references them (a duplicate, an undecodable upload, a removed image).

An upload's file is tied to its row's commit: it is first written aside (``uploads/.pending/<token>-<name>``), moved
to its place only once the row is committed, and removed when the add fails (the database down, say), so no file
without a row is left. A process killed in between leaves a pending file that ``msir-index verify --repair`` moves
in (its row was committed) or deletes."""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from indexer.errors import CollectionError
from indexer.metadata.queries import MetadataStore
from msir_core.atomic import atomic_write_bytes
from msir_data.base import IMAGE_EXTENSIONS

_SUFFIX = re.compile(r"^\.[a-z0-9]{1,5}$")
UPLOADS = "uploads"
PENDING = ".pending"
# A pending file older than this belongs to no running upload (an add takes seconds): verify --repair settles it.
PENDING_MAX_AGE_S = 600.0


def _check_suffix(suffix: str) -> str:
    suffix = suffix.lower()
    if not _SUFFIX.match(suffix) or suffix not in IMAGE_EXTENSIONS:
        raise CollectionError(f"upload suffix {suffix!r} refused; expected one of {sorted(IMAGE_EXTENSIONS)}")
    return suffix


def final_path(directory: Path, digest: str, suffix: str) -> Path:
    """``uploads/<sha256[:2]>/<sha256><suffix>``: content-addressed, no user path."""
    return directory / UPLOADS / digest[:2] / f"{digest}{_check_suffix(suffix)}"


def store_upload(directory: Path, data: bytes, suffix: str) -> Path:
    """Write uploaded bytes straight to their final path (callers that index the file themselves)."""
    path = final_path(directory, hashlib.sha256(data).hexdigest(), suffix)
    if not path.is_file():
        atomic_write_bytes(path, data)
    return path


def stage(directory: Path, data: bytes, suffix: str) -> tuple[Path, Path]:
    """Write uploaded bytes aside; returns ``(pending, final)``: :func:`settle` moves it in after the commit."""
    final = final_path(directory, hashlib.sha256(data).hexdigest(), suffix)
    pending = directory / UPLOADS / PENDING / f"{uuid.uuid4().hex}-{final.name}"
    atomic_write_bytes(pending, data)
    return pending, final


def settle(pending: Path, final: Path) -> None:
    """Move a committed upload into place (content-addressed: an existing file already holds the same bytes)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(pending, final)


def final_of_pending(directory: Path, pending: Path) -> Path:
    name = pending.name.split("-", 1)[-1]
    return directory / UPLOADS / name[:2] / name


def stale_pending(directory: Path, max_age_s: float = PENDING_MAX_AGE_S) -> list[Path]:
    folder = directory / UPLOADS / PENDING
    if not folder.is_dir():
        return []
    now = time.time()
    return sorted(p for p in folder.iterdir() if p.is_file() and now - p.stat().st_mtime > max_age_s)


def stored_files(directory: Path) -> list[Path]:
    """Every file under ``uploads/`` except the pending ones (and temp files of a write in progress)."""
    root = directory / UPLOADS
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.rglob("*") if p.is_file() and PENDING not in p.relative_to(root).parts[:1]
        and not p.name.endswith(".tmp")
    )  # fmt: skip


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
