"""ISIC-2018 Task 3 (= HAM10000): images + the one-hot ground-truth CSV or the HAM10000 metadata CSV.

Layouts seen in the wild, all handled: ``ISIC2018_Task3_Training_Input/`` +
``ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv`` (official; Validation/Test
files give official splits when present), Kaggle's ``HAM10000_images_part_{1,2}/`` +
``HAM10000_metadata.csv``, ``images/`` + either CSV, or the complete 64 px set of ``shared/datasets``
(``images/`` + the official Training and Test ground truth + ``HAM10000_metadata.csv``). Images are found
anywhere below the root by their id (file stem).

Validation. ISIC 2018's validation images are rarely at hand (they are not in the 64 px set). When the official
Training and Test files are there but no Validation file, ``val_fraction`` of the training images become the
``val`` split, carved **by lesion** (HAM10000 shows one lesion in several images; separating them would leak
near-duplicates into validation) and **stratified by class** (each diagnosis loses about ``val_fraction`` of its
images), the lesions chosen by a stable hash of their id and ``seed``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from msir_data.base import (
    DatasetError,
    DatasetReader,
    Item,
    assign_split,
    check_fractions,
    hash_fraction,
)
from msir_data.label_files import choose_csv, index_images, read_header, read_rows, resolve_option_path

logger = logging.getLogger(__name__)

ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
# The diagnoses behind the codes, as the ISIC 2018 Task 3 challenge names them.
ISIC_DESCRIPTIONS = {
    "MEL": "melanoma",
    "NV": "melanocytic nevus",
    "BCC": "basal cell carcinoma",
    "AKIEC": "actinic keratosis / Bowen's disease",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular lesion",
}
ONE_HOT_COLUMNS = ["image", *ISIC_CLASSES]
HAM_COLUMNS = ["lesion_id", "image_id", "dx"]
# Official ground-truth file names carry their split.
OFFICIAL_SPLITS = (("Training", "train"), ("Validation", "val"), ("Test", "test"))


def _csv_kind(path: Path) -> str | None:
    header = read_header(path)
    if all(c in header for c in HAM_COLUMNS):
        return "ham"
    if all(c in header for c in ONE_HOT_COLUMNS):
        return "onehot"
    return None


def find_label_files(root: Path) -> dict[str, list[Path]]:
    """ISIC label CSVs in ``root`` and its direct sub-folders, by kind (``ham`` / ``onehot``)."""
    found: dict[str, list[Path]] = {"ham": [], "onehot": []}
    if not root.is_dir():
        return found
    candidates = sorted(root.glob("*.csv")) + sorted(root.glob("*/*.csv"))
    for path in candidates:
        if path.name.startswith("."):
            continue
        try:
            kind = _csv_kind(path)
        except DatasetError:
            continue
        if kind:
            found[kind].append(path)
    return found


def detect(root: Path) -> bool:
    return any(find_label_files(root).values())


def _official_split(path: Path) -> str | None:
    for word, split in OFFICIAL_SPLITS:
        if word.lower() in path.name.lower():
            return split
    return None


class IsicReader(DatasetReader):
    """7 classes in the ground-truth column order (MEL, NV, BCC, AKIEC, BKL, DF, VASC); single-label.

    Split: official Training/Validation/Test ground-truth files when two or more are present; otherwise a
    deterministic hash split (``test_fraction``, ``val_fraction``, ``seed``) by ``lesion_id`` for the HAM10000
    metadata (one lesion's images never straddle splits) or by image for the one-hot CSV. ``csv`` picks the
    label file explicitly (relative to the root or absolute).
    """

    name = "isic2018"

    def __init__(
        self,
        root: str | Path,
        *,
        csv: str | Path | None = None,
        test_fraction: float = 0.2,
        val_fraction: float = 0.0,
        seed: int | str = 0,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(root, max_pixels=max_pixels)
        check_fractions(test_fraction, val_fraction)
        self._split_args = {"test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed}
        self.class_names = list(ISIC_CLASSES)
        self.class_descriptions = dict(ISIC_DESCRIPTIONS)
        self._images = index_images([self.root], key="stem")
        self._label_files: list[Path] = []
        self._seen: set[str] = set()
        items: list[Item] = []
        plan = self._plan(csv)
        for path, kind, split in plan:
            self._label_files.append(path)
            if kind == "ham":
                items += self._read_ham(path)
            else:
                items += self._read_onehot(path, split)
        official = {split for _, _, split in plan if split is not None}
        if val_fraction > 0 and "train" in official and "val" not in official:
            items = self._carve_val(items, val_fraction, seed)
        self._set_items(items)

    def _lesions(self) -> dict[str, str]:
        """image id -> lesion id from the HAM10000 metadata beside the ground truth (empty when absent)."""
        found = find_label_files(self.root)["ham"]
        if not found:
            return {}
        path = choose_csv(found, "image_id", self._images)
        self._label_files.append(path)
        return {r.values["image_id"]: r.values["lesion_id"] for r in read_rows(path, HAM_COLUMNS)}

    def _carve_val(self, items: list[Item], fraction: float, seed: int | str) -> list[Item]:
        """Move ``fraction`` of every class's training images, whole lesions at a time, to ``val``."""
        lesion_of = self._lesions()
        if not lesion_of:
            logger.warning(
                "%s: no HAM10000_metadata.csv beside the ground truth: validation is carved by image, so images "
                "of one lesion may straddle train and val",
                self.root,
            )
        groups: dict[str, list[int]] = {}  # lesion -> rows of the train items
        for row, item in enumerate(items):
            if item.split == "train":
                image_id = Path(item.item_id).stem
                groups.setdefault(lesion_of.get(image_id) or image_id, []).append(row)
        by_class: dict[int, list[str]] = {}
        for lesion, rows in groups.items():
            by_class.setdefault(items[rows[0]].labels[0], []).append(lesion)
        chosen: set[int] = set()
        for lesions in by_class.values():
            target = fraction * sum(len(groups[g]) for g in lesions)
            taken = 0
            for lesion in sorted(lesions, key=lambda g: hash_fraction(g, f"isic-val-{seed}")):
                size = len(groups[lesion])
                # Take a lesion while it brings the class's count closer to its target.
                if abs(taken + size - target) >= abs(taken - target):
                    continue
                taken += size
                chosen.update(groups[lesion])
        return [replace(item, split="val") if row in chosen else item for row, item in enumerate(items)]

    def _plan(self, csv: str | Path | None) -> list[tuple[Path, str, str | None]]:
        """(label file, kind, fixed split or None for a hash split) to read."""
        if csv is not None:
            path = resolve_option_path(self.root, csv)
            kind = _csv_kind(path)
            if kind is None:
                raise DatasetError(
                    f"{path}: neither an ISIC-2018 ground-truth CSV (columns {ONE_HOT_COLUMNS}) nor HAM10000 "
                    f"metadata (columns {HAM_COLUMNS}...); got {read_header(path)}"
                )
            return [(path, kind, None)]
        found = find_label_files(self.root)
        official = [(p, _official_split(p)) for p in found["onehot"] if _official_split(p)]
        if len({split for _, split in official}) >= 2:
            return [(p, "onehot", split) for p, split in official]
        if found["ham"]:
            return [(choose_csv(found["ham"], "image_id", self._images), "ham", None)]
        if found["onehot"]:
            return [(choose_csv(found["onehot"], "image", self._images), "onehot", None)]
        raise DatasetError(
            f"{self.root}: no ISIC label file; expected a CSV with columns {ONE_HOT_COLUMNS} (ISIC-2018 "
            f"Task 3 ground truth) or {HAM_COLUMNS}... (HAM10000 metadata) in the folder or a sub-folder"
        )

    def _item(self, image_id: str, label: int, split: str, source: str) -> Item | None:
        if image_id in self._seen:
            self.skipped.add(source, "duplicate image", image_id)
            return None
        path = self._images.get(image_id)
        if path is None:
            self.skipped.add(source, "image file missing", image_id)
            return None
        self._seen.add(image_id)
        return Item(path.relative_to(self.root).as_posix(), (label,), split, str(path), path)

    def _read_ham(self, csv_path: Path) -> list[Item]:
        dx_index = {name.lower(): i for i, name in enumerate(self.class_names)}
        items = []
        for row in read_rows(csv_path, HAM_COLUMNS):
            source = f"{csv_path}:{row.line}"
            image_id, lesion_id, dx = (
                row.values["image_id"],
                row.values["lesion_id"],
                row.values["dx"].lower(),
            )
            if not image_id or not lesion_id:
                self.skipped.add(source, "missing image_id or lesion_id")
                continue
            if dx not in dx_index:
                self.skipped.add(source, "unknown label", f"dx={dx!r} for {image_id}; expected {sorted(dx_index)}")
                continue
            split = assign_split(lesion_id, **self._split_args)  # type: ignore[arg-type]
            item = self._item(image_id, dx_index[dx], split, source)
            if item:
                items.append(item)
        return items

    def _read_onehot(self, csv_path: Path, split: str | None) -> list[Item]:
        items = []
        for row in read_rows(csv_path, ONE_HOT_COLUMNS):
            source = f"{csv_path}:{row.line}"
            image_id = row.values["image"]
            try:
                values = [float(row.values[c]) for c in ISIC_CLASSES]
            except ValueError:
                self.skipped.add(source, "bad one-hot value", f"{[row.values[c] for c in ISIC_CLASSES]}")
                continue
            if any(v not in (0.0, 1.0) for v in values) or sum(values) != 1.0:
                self.skipped.add(source, "not exactly one class", f"{image_id}: {values}")
                continue
            row_split = split or assign_split(image_id, **self._split_args)  # type: ignore[arg-type]
            item = self._item(image_id, values.index(1.0), row_split, source)
            if item:
                items.append(item)
        return items

    def data_files(self) -> list[Path]:
        return list(self._label_files)
