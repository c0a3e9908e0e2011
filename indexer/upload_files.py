"""Files uploaded into a collection: stored content-addressed under ``<collection>/uploads/``, never at a user path,
and deleted again when no database row references them (a duplicate, an undecodable upload, a removed image).

An upload's file is tied to its row's commit: it is first written aside
(``uploads/.pending/<owner>.<token>-<name>``), moved to its place only once the row is committed, and removed when
the add fails (the database down, say), so no file without a row is left. A process killed in between leaves a
pending file; the server's start and ``msir-index verify --repair`` move it in (its row was committed) or delete it.

Whose pending file is whose: every writing process holds an exclusive ``flock`` on
``<collection>/.upload-owners/<owner>.lock`` (beside ``uploads/``, which holds image files only) for as long as it
lives; the kernel drops it when the process dies, kill -9 included. A pending file whose owner's lock can be taken
belongs to a dead process and is settled at once; a live writer's files are never touched, however old. Files of
the older ``<token>-<name>`` form (no owner) are settled once older than PENDING_MAX_AGE_S``."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from indexer import row_paths
from indexer.errors import CollectionError
from indexer.metadata.queries import MetadataStore
from indexer.records import ImageRecord
from msir_core.atomic import atomic_write_bytes
from msir_data.base import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

_SUFFIX = re.compile(r"^\.[a-z0-9]{1,5}$")
UPLOADS = "uploads"
PENDING = ".pending"
LOCK_SUFFIX = ".lock"
OWNERS = ".upload-owners"
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


# (pid, pending folder) -> (owner token, the open lock file): one owner per process and collection. The pid is part of
# the key so that a forked child takes its own lock instead of sharing its parent's.
_owners: dict[tuple[int, Path], tuple[str, int]] = {}
_owners_lock = threading.Lock()


def _owner(directory: Path) -> str:
    """This process's owner token in the collection ``directory``, its lock taken (held until the process exits)."""
    folder = directory / OWNERS
    key = (os.getpid(), folder.resolve())
    with _owners_lock:
        if key not in _owners:
            folder.mkdir(parents=True, exist_ok=True)
            token = uuid.uuid4().hex
            fd = os.open(folder / f"{token}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh random name: nobody else holds it
            _owners[key] = (token, fd)
        return _owners[key][0]


def stage(directory: Path, data: bytes, suffix: str) -> tuple[Path, Path]:
    """Write uploaded bytes aside; returns ``(pending, final)``: :func:`settle` moves it in after the commit."""
    final = final_path(directory, hashlib.sha256(data).hexdigest(), suffix)
    pending = directory / UPLOADS / PENDING / f"{_owner(directory)}.{uuid.uuid4().hex}-{final.name}"
    atomic_write_bytes(pending, data)
    return pending, final


def settle(pending: Path, final: Path) -> None:
    """Move a committed upload into place (content-addressed: an existing file already holds the same bytes)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(pending, final)


def final_of_pending(directory: Path, pending: Path) -> Path:
    name = pending.name.split("-", 1)[-1]
    return directory / UPLOADS / name[:2] / name


def _owner_alive(lock: Path) -> bool:
    """Whether a process still holds ``lock`` (taking it, briefly, when nobody does)."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if it was taken
    return False


def stale_pending(directory: Path, max_age_s: float = PENDING_MAX_AGE_S) -> list[Path]:
    """Pending files no running upload will settle: their owner process is gone (or, for files without an owner,
    they are older than ``max_age_s``). A live writer's files are never listed."""
    folder = directory / UPLOADS / PENDING
    if not folder.is_dir():
        return []
    now = time.time()
    alive: dict[str, bool] = {}
    stale = []
    for p in folder.iterdir():
        if not p.is_file() or p.name.endswith(".tmp"):
            continue
        head = p.name.split("-", 1)[0]
        if "." in head:
            owner = head.split(".", 1)[0]
            if owner not in alive:
                alive[owner] = _owner_alive(directory / OWNERS / f"{owner}{LOCK_SUFFIX}")
            if not alive[owner]:
                stale.append(p)
        elif now - p.stat().st_mtime > max_age_s:
            stale.append(p)
    return sorted(stale)


def dead_owner_locks(directory: Path) -> list[Path]:
    """Lock files of owners that are gone (removed once their pending files are settled)."""
    folder = directory / OWNERS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"*{LOCK_SUFFIX}") if not _owner_alive(p))


def uploads_tail(path: str | Path) -> str | None:
    """``uploads/<xx>/<name>`` of a path that points into some collection's uploads folder, else None (how the
    migration to relative paths recognises an upload stored by an older msir under its absolute path)."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-3] == UPLOADS and parts[-1].startswith(parts[-2]):
        return "/".join(parts[-3:])
    return None


def stored_files(directory: Path) -> list[Path]:
    """Every file under ``uploads/`` except the pending ones (and temp files of a write in progress)."""
    root = directory / UPLOADS
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.rglob("*") if p.is_file() and PENDING not in p.relative_to(root).parts[:1]
        and not p.name.endswith(".tmp")
    )  # fmt: skip


def discard_deleted(directory: Path, records: Iterable[ImageRecord]) -> int:
    """Delete the upload files of rows whose delete was just committed; returns how many.

    No database query after the commit (a connection cut there left the file behind as an orphan): an upload's
    name is its content's sha256, which is unique among rows, so the deleted row was the only one naming it. Callers
    hold the collection's writer lock, so no other writer commits (and moves in) the same content meanwhile."""
    root = (directory / UPLOADS).resolve()
    removed = 0
    for record in records:
        if record.path is None or uploads_tail(record.path) is None:
            continue
        file = row_paths.resolve(directory, record.path)
        if file.name.startswith(record.sha256) and file.resolve().is_relative_to(root) and file.is_file():
            file.unlink(missing_ok=True)
            removed += 1
    return removed


def discard_unreferenced(directory: Path, store: MetadataStore, paths: Iterable[str | Path]) -> int:
    """Delete files under ``uploads/`` (our own copies) that no database row references; returns how many.

    Files outside ``uploads/`` (a user's own dataset) are never touched."""
    uploads = (directory / UPLOADS).resolve()
    candidates = {row_paths.resolve(directory, p).resolve() for p in paths}
    removed = 0
    for path in sorted(p for p in candidates if p.is_relative_to(uploads) and p.is_file()):
        if not store.ids_for_paths([row_paths.to_stored(directory, path)]):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
