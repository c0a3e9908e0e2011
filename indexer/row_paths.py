"""Where a row's file is. A row stores its file's path relative to the collection root when the file lies inside the
collection (every upload: ``uploads/<xx>/<sha256><suffix>``), so a collection copied (``cp -a``), moved or restored
elsewhere still finds every file; a file of the user's own dataset outside the collection keeps its absolute path.
:func:`resolve` is the one place a stored path is turned into a file."""

from __future__ import annotations

from pathlib import Path


def to_stored(directory: Path, path: str | Path) -> str:
    """The form a row stores for ``path``: POSIX and relative to ``directory`` when inside it, else absolute."""
    file = Path(path)
    if not file.is_absolute():  # already stored form (relative to the collection)
        return file.as_posix()
    root = directory.resolve()
    file = file.resolve()
    return file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)


def resolve(directory: Path, stored: str | Path) -> Path:
    """The file a row's stored path names in the collection ``directory``."""
    file = Path(stored)
    return file if file.is_absolute() else directory / file
