"""CSV and image-folder helpers shared by the label-file formats (ISIC, ChestX-ray14, manifest)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from msir_data.base import DatasetError, is_hidden, is_image_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line number in the file (for messages a person can open)
    values: dict[str, str]


def read_header(path: Path) -> list[str]:
    """The header of a CSV file (stripped cell values); [] when the file is empty."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return [cell.strip() for cell in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the CSV header ({exc})") from exc


def read_rows(path: Path, required: Iterable[str]) -> Iterator[Row]:
    """Rows of a CSV with a header, as dicts; CRLF and a UTF-8 BOM are fine.

    Raises :class:`DatasetError` naming the file when a ``required`` column is missing. Extra columns (and the
    unquoted commas inside NIH's ``OriginalImage[Width,Height]`` header) are harmless: only named columns are
    read.
    """
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open the CSV file ({exc})") from exc
    with fh:
        reader = csv.reader(fh)
        try:
            header = [cell.strip() for cell in next(reader, [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; expected {list(required)}, got {header}")
            line = reader.line_num
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    yield Row(line + 1, {h: c.strip() for h, c in zip(header, cells, strict=False)})
                line = reader.line_num
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"{path}: not a readable CSV file near line {reader.line_num} ({exc})") from exc


def index_images(dirs: Iterable[Path], *, key: str = "name") -> dict[str, Path]:
    """Image files under ``dirs`` (recursively, hidden entries ignored) by file name or stem.

    The first occurrence wins (dirs in the order given, files sorted), so the choice is deterministic.
    """
    found: dict[str, Path] = {}
    for base in dirs:
        if not base.is_dir():
            continue
        for path in sorted(walk_files(base)):
            if not is_image_name(path):
                continue
            k = path.name if key == "name" else path.stem
            if k in found:
                logger.debug("duplicate image %s (keeping %s)", path, found[k])
                continue
            found[k] = path
    return found


def walk_files(base: Path) -> Iterator[Path]:
    """Every non-hidden file under ``base`` (following symlinks), hidden folders pruned."""
    for entry in sorted(base.iterdir()):
        if is_hidden(entry):
            continue
        if entry.is_dir():
            yield from walk_files(entry)
        elif entry.is_file():
            yield entry


def choose_csv(candidates: list[Path], column: str, images: dict[str, Path], suffix: str = "") -> Path:
    """The candidate label file that describes the images present best.

    Real copies often ship the full label table beside a subset of the images (and a matching subset table):
    prefer the file with the most rows whose image exists, then the one with fewer rows (fewer skips), then
    the name. The choice is logged.
    """
    if len(candidates) == 1:
        return candidates[0]
    scored = []
    for path in candidates:
        rows = matched = 0
        for row in read_rows(path, [column]):
            rows += 1
            matched += (row.values.get(column, "") + suffix) in images
        scored.append((-matched, rows, path.name, path))
    scored.sort()
    best = scored[0]
    logger.info(
        "label file %s chosen among %s (%s rows, %s with an image)",
        best[3],
        [p.name for p in candidates],
        best[1],
        -best[0],
    )
    return best[3]


def resolve_option_path(root: Path, value: str | Path) -> Path:
    """A file given as an option: absolute, or relative to the dataset root; must exist."""
    path = Path(value)
    if not path.is_absolute():
        path = root / path
    if not path.is_file():
        raise DatasetError(f"{path}: label file not found")
    return path
