"""Crash-safe file replacement: write a temp file in the same folder, fsync it, ``os.replace``, fsync the folder.

A reader (or a process started after a crash, even ``kill -9`` mid-write) sees the old file or the new one,
never half of one. Temp files are named ``.NAME.*.tmp`` so a crashed writer's leftovers can be removed. The
one implementation for every package (checkpoints, training state, run records, indexes, manifests, reports,
thumbnails), hence its home in ``models``, which all of them depend on.

``tempfile.mkstemp`` creates its file with mode 0600 and ``os.replace`` keeps it, so the file is given the mode
a plain ``open(path, "w")`` would have had (``0o666`` less the umask) before the rename, unless the caller asks
for another (``mode=0o600`` for secrets). The temp file is 0600 until then, so a secret written into it is
never readable by others, not even for a moment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

# The umask can only be read by setting it; doing that per write would race with other threads creating files
# (for an instant they would get umask 0), so it is read once, at import, before any writer thread exists.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object], *, mode: int | None = None) -> None:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``; on any error ``path`` is untouched.

    ``write`` must write to the path it is given (it exists, empty). ``mode`` is the new file's permission bits,
    taken as given; ``None`` means what ``open(path, "w")`` gives a new file (``0o666`` less the umask).
    Missing parent folders are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode=mode)


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


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temps"]
