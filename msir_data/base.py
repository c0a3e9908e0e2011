"""The reader contract shared by every dataset format: items, the skip log, errors and split helpers."""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from models.preprocessing import open_image
from msir_core.atomic import atomic_write

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# Splits are listed in this order; any other split name follows, alphabetically.
SPLIT_ORDER = ("train", "val", "test", "all")


class DatasetError(ValueError):
    """A structurally wrong dataset (missing file, bad header, refused pickle); names file and expectation."""


class BadItemError(ValueError):
    """One item that cannot be loaded; the message names its source and the reason."""


@dataclass(frozen=True)
class Item:
    """One image of a dataset; ``labels`` index ``reader.class_names`` (empty = no finding)."""

    item_id: str
    labels: tuple[int, ...]
    split: str
    source: str
    path: Path | None = None


@dataclass(frozen=True)
class SkipEntry:
    source: str
    reason: str
    detail: str = ""


class SkipLog:
    """Everything skipped, with the reason; never silently lost.

    ``reason`` is a short category (counted by :meth:`summary`); ``detail`` holds the specifics (the bad
    value, the decoder's message). Adding the same (source, reason) twice records it once, so listing a
    dataset again or re-running a cached decode does not inflate the counts.
    """

    def __init__(self) -> None:
        self._entries: list[SkipEntry] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, source: str | Path, reason: str, detail: str = "") -> bool:
        """Record a skipped item; returns False when this (source, reason) was already recorded."""
        key = (str(source), reason)
        if key in self._seen:
            return False
        self._seen.add(key)
        self._entries.append(SkipEntry(str(source), reason, detail))
        logger.debug("skipped %s: %s %s", source, reason, detail)
        return True

    @property
    def entries(self) -> list[SkipEntry]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[SkipEntry]:
        return iter(list(self._entries))

    def summary(self) -> dict[str, int]:
        """Counts by reason, most frequent first."""
        return dict(Counter(e.reason for e in self._entries).most_common())

    def describe(self) -> str:
        """One line for logs: ``3 skipped (image file missing: 2, unknown label: 1)``."""
        if not self._entries:
            return "nothing skipped"
        parts = ", ".join(f"{reason}: {n}" for reason, n in self.summary().items())
        return f"{len(self._entries)} skipped ({parts})"

    def write(self, path: str | Path) -> Path:
        """Write a CSV report (``source,reason,detail``), atomically; returns the path."""
        path = Path(path)

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["source", "reason", "detail"])
                for e in self._entries:
                    writer.writerow([e.source, e.reason, e.detail])

        atomic_write(path, write)
        return path


class DatasetReader:
    """Base class of every format reader.

    Subclasses list their items once, in ``__init__`` (structural errors surface at open time and bad rows are
    recorded in :attr:`skipped` exactly once), then call :meth:`_set_items`.
    """

    name: str = "dataset"

    def __init__(self, root: str | Path, *, max_pixels: int | None = None) -> None:
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.skipped = SkipLog()
        self.class_names: list[str] = []
        self.class_descriptions: dict[str, str] = {}  # class name -> full name, where the names are codes
        self.multi_label = False
        self._items: list[Item] = []
        self._splits: list[str] = []

    # -- listing -------------------------------------------------------------------------------------------
    def _set_items(self, items: list[Item]) -> None:
        self._items = items
        present = {item.split for item in items}
        self._splits = sorted(
            present, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s)
        )
        counts = {split: self.count(split) for split in self.splits()}
        level = logging.WARNING if self.skipped else logging.INFO
        logger.log(
            level,
            "%s at %s: %s items %s, %s",
            self.name,
            self.root,
            len(items),
            counts,
            self.skipped.describe(),
        )

    def splits(self) -> list[str]:
        """Split names present, train/val/test/all first."""
        return list(self._splits)

    def items(self, split: str | None = None) -> Iterator[Item]:
        """Items of ``split`` (every split when None), in a stable order."""
        if split is None:
            return iter(self._items)
        if split not in self.splits():
            raise DatasetError(f"{self.name} at {self.root}: no split {split!r}; available: {self.splits()}")
        return (item for item in self._items if item.split == split)

    def count(self, split: str | None = None) -> int:
        if split is None:
            return len(self._items)
        return sum(1 for item in self._items if item.split == split)

    def __len__(self) -> int:
        return len(self._items)

    def data_files(self) -> list[Path]:
        """Files besides the items' own paths whose content defines the dataset (CSVs, pickles, IDX files).

        Decode caches fingerprint them, so an edited label file gives a new cache.
        """
        return []

    # -- loading -------------------------------------------------------------------------------------------
    def load(self, item: Item) -> Image.Image:
        """Decode ``item``; raises ``models.ImageDecodeError`` / :class:`BadItemError` naming the source."""
        if item.path is None:
            raise BadItemError(f"{item.source}: {self.name} item has no file to load")
        return open_image(item.path, max_pixels=self.max_pixels, name=item.source)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, items={len(self._items)}, "
            f"splits={self.splits()}, classes={len(self.class_names)}, multi_label={self.multi_label}, "
            f"skipped={len(self.skipped)})"
        )


# -- split helpers ------------------------------------------------------------------------------------------
def hash_fraction(key: str, seed: int | str = 0) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` (same on every machine and Python run)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0 or test_fraction + val_fraction >= 1.0:
        raise ValueError(
            f"val_fraction must be in [0, 1) with test_fraction + val_fraction < 1, got "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )


def assign_split(group: str, *, test_fraction: float, val_fraction: float = 0.0, seed: int | str = 0) -> str:
    """Split by hashing ``group`` (patient, lesion, image): one group never straddles two splits.

    Fractions are expected values, not exact counts: a deterministic hash of the group decides, so adding
    images to a dataset never moves existing groups to another split.
    """
    u = hash_fraction(group, seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__MACOSX"


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS
