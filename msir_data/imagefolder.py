"""Folders of images named by class: ``root/<split>/<class>/*`` or ``root/<class>/*`` (one split, ``all``)."""

from __future__ import annotations

import logging
from pathlib import Path

from msir_data.base import DatasetError, DatasetReader, Item, is_hidden, is_image_name
from msir_data.label_files import walk_files

logger = logging.getLogger(__name__)

# Folder name -> split name; the validation spellings in the wild all become "val".
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not is_hidden(p))


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and is_image_name(p) and not is_hidden(p) for p in folder.iterdir())


def split_layout(root: Path) -> dict[str, Path] | None:
    """``{split: folder}`` when every top-level folder is a split name, None for the flat class layout."""
    dirs = _subdirs(root)
    named = [d for d in dirs if d.name.lower() in SPLIT_DIRS]
    if not named:
        return None
    others = [d.name for d in dirs if d.name.lower() not in SPLIT_DIRS]
    if others:
        raise DatasetError(
            f"{root}: mixes split folders {[d.name for d in named]} with other folders {others}; expected "
            f"either {root}/<split>/<class>/* (splits {sorted(SPLIT_DIRS)}) or {root}/<class>/*"
        )
    layout: dict[str, Path] = {}
    for d in named:
        split = SPLIT_DIRS[d.name.lower()]
        if split in layout:
            raise DatasetError(f"{root}: both {layout[split].name}/ and {d.name}/ would be split {split!r}")
        layout[split] = d
    return layout


def detect(root: Path) -> bool:
    """Image files directly inside class folders (under split folders or not)."""
    if not root.is_dir():
        return False
    try:
        layout = split_layout(root)
    except DatasetError:
        return False
    parents = list(layout.values()) if layout else [root]
    return any(_has_images(class_dir) for parent in parents for class_dir in _subdirs(parent))


class ImageFolderReader(DatasetReader):
    """Class names are the class folder names, sorted; files below a class folder (any depth) are its images.

    Non-image files inside class folders are skipped and logged; hidden files and folders are ignored.
    """

    name = "imagefolder"

    def __init__(self, root: str | Path, *, max_pixels: int | None = None) -> None:
        super().__init__(root, max_pixels=max_pixels)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder (expected {self.root}/[<split>/]<class>/<image>)")
        layout = split_layout(self.root)
        parents = layout or {"all": self.root}
        found: list[tuple[str, str, Path]] = []  # (split, class, file)
        for split, parent in parents.items():
            for entry in sorted(parent.iterdir()):
                if is_hidden(entry):
                    continue
                if entry.is_file():
                    if is_image_name(entry):
                        self.skipped.add(entry, "image outside a class folder")
                    continue
                for path in walk_files(entry):
                    if is_image_name(path):
                        found.append((split, entry.name, path))
                    else:
                        self.skipped.add(path, "not an image file extension", path.suffix or "(none)")
        self.class_names = sorted({cls for _, cls, _ in found})
        if not self.class_names:
            raise DatasetError(
                f"{self.root}: no images in class folders; expected {self.root}/[<split>/]<class>/<image> "
                "with extensions jpg, jpeg, png, webp, bmp, tif, tiff, gif"
            )
        index = {name: i for i, name in enumerate(self.class_names)}
        items = [
            Item(path.relative_to(self.root).as_posix(), (index[cls],), split, str(path), path)
            for split, cls, path in found
        ]
        self._set_items(items)
