"""CSV manifest: ``path,label[,split]`` with a header; labels may be ``|``-separated (multi-label)."""

from __future__ import annotations

import logging
from pathlib import Path, PurePath

from msir_data.base import DatasetError, DatasetReader, Item
from msir_data.label_files import read_header, read_rows

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
COLUMNS = ["path", "label"]


def find_manifest(root: Path) -> Path | None:
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if (root / MANIFEST_NAME).is_file():
        return root / MANIFEST_NAME
    return None


def detect(root: Path) -> bool:
    path = find_manifest(root)
    if path is None:
        return False
    try:
        return all(c in read_header(path) for c in COLUMNS)
    except DatasetError:
        return False


def _sorted_names(names: set[str]) -> list[str]:
    """Alphabetical, or numeric when every label is an integer (so "10" comes after "9")."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


class ManifestReader(DatasetReader):
    """Paths are relative to the CSV's folder, or absolute; ``split`` defaults to ``all`` without the column.

    The dataset is multi-label when any row has more than one label; an empty label is then "no finding", and
    is skipped in a single-label manifest. ``class_names`` fixes the class order (rows with other labels are
    skipped); by default the labels found, sorted.
    """

    name = "manifest"

    def __init__(
        self,
        root: str | Path,
        *,
        class_names: list[str] | None = None,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(root, max_pixels=max_pixels)
        csv_path = find_manifest(self.root)
        if csv_path is None:
            raise DatasetError(f"{self.root}: expected a .csv manifest file or a folder holding {MANIFEST_NAME}")
        self.csv_path = csv_path
        base = csv_path.parent
        has_split = "split" in read_header(csv_path)
        rows: list[tuple[str, str, tuple[str, ...], str, Path]] = []  # (source, id, labels, split, path)
        seen: set[str] = set()
        # Decided on every row, even those skipped below: a missing file must not change what the labels mean.
        multi_label = False
        for row in read_rows(csv_path, COLUMNS):
            source = f"{csv_path}:{row.line}"
            raw_path = row.values["path"]
            split = row.values.get("split", "") if has_split else "all"
            labels = tuple(dict.fromkeys(part.strip() for part in row.values["label"].split("|") if part.strip()))
            multi_label = multi_label or len(labels) > 1
            if not raw_path:
                self.skipped.add(source, "empty path")
                continue
            if not split:
                self.skipped.add(source, "empty split", raw_path)
                continue
            path = Path(raw_path) if PurePath(raw_path).is_absolute() else base / raw_path
            item_id = PurePath(raw_path).as_posix()
            if item_id in seen:
                self.skipped.add(source, "duplicate path", raw_path)
                continue
            if not path.is_file():
                self.skipped.add(source, "image file missing", str(path))
                continue
            seen.add(item_id)
            rows.append((source, item_id, labels, split, path))
        self.multi_label = multi_label
        if class_names is not None:
            self.class_names = list(class_names)
        else:
            self.class_names = _sorted_names({label for _, _, labels, _, _ in rows for label in labels})
        index = {name: i for i, name in enumerate(self.class_names)}
        items: list[Item] = []
        for source, item_id, labels, split, path in rows:
            if not labels and not self.multi_label:
                self.skipped.add(source, "empty label", f"{item_id} (allowed only in a multi-label manifest)")
                continue
            unknown = [label for label in labels if label not in index]
            if unknown:
                self.skipped.add(source, "unknown label", f"{unknown} for {item_id}; expected {self.class_names}")
                continue
            items.append(Item(item_id, tuple(sorted(index[label] for label in labels)), split, str(path), path))
        self._set_items(items)

    def data_files(self) -> list[Path]:
        return [self.csv_path]
