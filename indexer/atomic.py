"""Crash-safe file replacement: write a temp file in the same folder, fsync it, ``os.replace``, fsync the folder.

A reader (or a process started after a crash, even ``kill -9`` mid-write) sees the old file or the new one,
never half of one. Temp files are named ``.NAME.*.tmp`` so a crashed writer's leftovers can be removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``; on any error ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temps(directory: Path, name: str) -> int:
    """Delete ``.NAME.*.tmp`` files left by a writer that was killed; returns how many."""
    removed = 0
    for stale in directory.glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    if removed:
        logger.info("removed %d temp file(s) of %s left by an interrupted save", removed, name)
    return removed
