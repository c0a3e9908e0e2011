"""NIH ChestX-ray14: PNGs + ``Data_Entry_2017*.csv`` (multi-label, ``|``-separated ``Finding Labels``).

Images live in ``images/`` or in the official archive layout ``images_001/images/`` ...
``images_012/images/``.
The official patient-wise split comes from ``train_val_list.txt`` / ``test_list.txt`` when both are present;
otherwise patients (never images) are split by a deterministic hash.
"""

from __future__ import annotations

import logging
from pathlib import Path

from msir_data.base import DatasetError, DatasetReader, Item, assign_split, check_fractions
from msir_data.label_files import choose_csv, index_images, read_rows, resolve_option_path

logger = logging.getLogger(__name__)

CHESTXRAY14_CLASSES = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
NO_FINDING = "No Finding"
COLUMNS = ["Image Index", "Finding Labels", "Patient ID"]
TRAIN_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"


def find_label_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("Data_Entry_2017*.csv") if p.is_file()) if root.is_dir() else []


def image_dirs(root: Path) -> list[Path]:
    dirs = [root / "images"]
    for part in sorted(root.glob("images_*")):
        dirs.append(part / "images" if (part / "images").is_dir() else part)
    return [d for d in dirs if d.is_dir()]


def detect(root: Path) -> bool:
    return bool(find_label_files(root))


def _read_list(path: Path) -> set[str]:
    try:
        return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the official split list ({exc})") from exc


class ChestXray14Reader(DatasetReader):
    """14 findings (``class_names`` in the paper's order); ``No Finding`` is the empty label set.

    Options: ``csv`` (label file, relative to the root or absolute; default: the ``Data_Entry_2017*.csv`` that
    matches the images present best), ``official_split`` (use the official lists when present),
    ``test_fraction``, ``val_fraction`` and ``seed`` for the patient-hash split (``val_fraction`` also carves
    a validation split out of the official train_val list, by patient).
    """

    name = "chestxray14"

    def __init__(
        self,
        root: str | Path,
        *,
        csv: str | Path | None = None,
        official_split: bool = True,
        test_fraction: float = 0.2,
        val_fraction: float = 0.0,
        seed: int | str = 0,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(root, max_pixels=max_pixels)
        check_fractions(test_fraction, val_fraction)
        self.multi_label = True
        self.class_names = list(CHESTXRAY14_CLASSES)
        dirs = image_dirs(self.root)
        if not dirs:
            raise DatasetError(f"{self.root}: no images/ or images_*/images/ folder (ChestX-ray14 layout)")
        images = index_images(dirs, key="name")
        if csv is not None:
            self.csv_path = resolve_option_path(self.root, csv)
        else:
            candidates = find_label_files(self.root)
            if not candidates:
                raise DatasetError(f"{self.root}: no Data_Entry_2017*.csv label file (columns {COLUMNS}...)")
            self.csv_path = choose_csv(candidates, "Image Index", images)
        self._files = [self.csv_path]
        official = self._official_lists(official_split)
        index = {name: i for i, name in enumerate(self.class_names)}
        seen: set[str] = set()
        items: list[Item] = []
        for row in read_rows(self.csv_path, COLUMNS):
            source = f"{self.csv_path}:{row.line}"
            name, patient = row.values["Image Index"], row.values["Patient ID"]
            findings = [f.strip() for f in row.values["Finding Labels"].split("|") if f.strip()]
            unknown = [f for f in findings if f not in index and f != NO_FINDING]
            if not name or not patient:
                self.skipped.add(source, "missing Image Index or Patient ID")
            elif not findings:
                self.skipped.add(source, "empty Finding Labels", name)
            elif unknown:
                self.skipped.add(source, "unknown label", f"{unknown} for {name}; expected {self.class_names}")
            elif NO_FINDING in findings and len(findings) > 1:
                self.skipped.add(source, "'No Finding' with findings", f"{findings} for {name}")
            elif name in seen:
                self.skipped.add(source, "duplicate image", name)
            elif name not in images:
                self.skipped.add(source, "image file missing", name)
            else:
                split = self._split(name, patient, official, test_fraction, val_fraction, seed)
                if split is None:
                    self.skipped.add(source, "not in the official split lists", name)
                    continue
                seen.add(name)
                labels = tuple(sorted({index[f] for f in findings if f != NO_FINDING}))
                path = images[name]
                items.append(Item(path.relative_to(self.root).as_posix(), labels, split, str(path), path))
        self._set_items(items)

    def _official_lists(self, wanted: bool) -> tuple[set[str], set[str]] | None:
        train, test = self.root / TRAIN_LIST, self.root / TEST_LIST
        if not wanted or not (train.is_file() or test.is_file()):
            return None
        if not (train.is_file() and test.is_file()):
            logger.warning(
                "%s: only one of %s / %s present; splitting patients by hash instead",
                self.root,
                TRAIN_LIST,
                TEST_LIST,
            )
            return None
        self._files += [train, test]
        return _read_list(train), _read_list(test)

    @staticmethod
    def _split(
        name: str,
        patient: str,
        official: tuple[set[str], set[str]] | None,
        test_fraction: float,
        val_fraction: float,
        seed: int | str,
    ) -> str | None:
        if official is None:
            return assign_split(patient, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
        train_val, test = official
        if name in test:
            return "test"
        if name in train_val:
            if val_fraction and assign_split(patient, test_fraction=0.0, val_fraction=val_fraction, seed=seed) == "val":
                return "val"
            return "train"
        return None

    def data_files(self) -> list[Path]:
        return list(self._files)
