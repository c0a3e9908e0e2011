"""NIH ChestX-ray14: multi-label parsing, CRLF, nested image folders, patient-wise splits."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from msir_data import DatasetError, open_dataset
from msir_data.chestxray import CHESTXRAY14_CLASSES
from tests.fixtures_formats import nih_row, write_chestxray


def _patient(item_id: str) -> str:
    return Path(item_id).name.split("_")[0]


def test_labels_multi_label_and_no_finding(tmp_path: Path) -> None:
    root = write_chestxray(tmp_path, patients=3, images_per_patient=3)
    reader = open_dataset("chestxray14", root)
    assert reader.multi_label
    assert reader.class_names == CHESTXRAY14_CLASSES and len(reader.class_names) == 14
    assert len(reader) == 9 and not reader.skipped
    labels = {i.item_id: [reader.class_names[k] for k in i.labels] for i in reader.items()}
    assert labels["images/00000001_000.png"] == ["Cardiomegaly"]
    assert labels["images/00000001_001.png"] == []  # No Finding
    assert labels["images/00000001_002.png"] == ["Cardiomegaly", "Emphysema"]
    assert labels["images/00000002_001.png"] == ["Atelectasis", "Effusion", "Infiltration"]
    assert labels["images/00000003_001.png"] == ["Pneumothorax", "Pleural_Thickening"]
    item = next(reader.items())
    img = reader.load(item)
    assert img.mode == "L" and img.size == (16, 16)


def test_bad_rows_skipped_and_logged(tmp_path: Path) -> None:
    extra = [
        nih_row("00000009_000.png", "Effusion", 0, 9),  # image missing
        nih_row("00000001_000.png", "Effusion", 0, 1),  # duplicate
        nih_row("00000001_001.png", "Effusion|Covid", 1, 1),  # unknown label (row before the duplicate check)
        nih_row("00000001_002.png", "No Finding|Mass", 2, 1),  # contradictory
    ]
    root = write_chestxray(tmp_path, patients=2, images_per_patient=3, extra_rows=extra)
    reader = open_dataset("chestxray14", root)
    assert len(reader) == 6
    assert reader.skipped.summary() == {
        "image file missing": 1,
        "duplicate image": 1,
        "unknown label": 1,
        "'No Finding' with findings": 1,
    }
    missing = next(e for e in reader.skipped if e.reason == "image file missing")
    assert missing.source == f"{root / 'Data_Entry_2017_v2020.csv'}:8" and missing.detail == "00000009_000.png"
    assert "Covid" in next(e.detail for e in reader.skipped if e.reason == "unknown label")


def test_hash_split_is_patient_wise_and_deterministic(tmp_path: Path) -> None:
    root = write_chestxray(tmp_path, patients=40, images_per_patient=3)
    reader = open_dataset("chestxray14", root, test_fraction=0.25, val_fraction=0.15)
    assert reader.splits() == ["train", "val", "test"]
    splits_of: dict[str, set[str]] = defaultdict(set)
    for item in reader.items():
        splits_of[_patient(item.item_id)].add(item.split)
    assert len(splits_of) == 40
    assert all(len(s) == 1 for s in splits_of.values())  # a patient never straddles splits
    again = open_dataset("chestxray14", root, test_fraction=0.25, val_fraction=0.15)
    assert [i.split for i in again.items()] == [i.split for i in reader.items()]
    reseeded = open_dataset("chestxray14", root, test_fraction=0.25, val_fraction=0.15, seed=7)
    assert [i.split for i in reseeded.items()] != [i.split for i in reader.items()]


def test_official_lists_and_nested_archive_layout(tmp_path: Path) -> None:
    root = write_chestxray(tmp_path, patients=5, images_per_patient=2, official_split=True, nested=True)
    reader = open_dataset("auto", root)
    assert reader.name == "chestxray14"
    assert [i.item_id for i in reader.items("test")] == [
        "images_001/images/00000005_000.png",
        "images_002/images/00000005_001.png",
    ]
    assert reader.count("train") == 8
    with_val = open_dataset("chestxray14", root, val_fraction=0.5)
    assert {i.item_id for i in with_val.items("test")} == {i.item_id for i in reader.items("test")}
    assert with_val.count("train") + with_val.count("val") == 8
    (root / "train_val_list.txt").write_text("00000001_000.png\n", encoding="utf-8")
    partial = open_dataset("chestxray14", root)
    assert partial.count("train") == 1 and partial.count("test") == 2
    assert partial.skipped.summary() == {"not in the official split lists": 7}
    hashed = open_dataset("chestxray14", root, official_split=False)
    assert len(hashed) == 10 and not hashed.skipped


def test_structural_errors(tmp_path: Path) -> None:
    root = write_chestxray(tmp_path, patients=1)
    csv_path = root / "Data_Entry_2017_v2020.csv"
    csv_path.write_bytes(b"Image Index,Labels,Patient ID\r\n00000001_000.png,Mass,1\r\n")
    with pytest.raises(DatasetError, match=r"Data_Entry_2017_v2020.csv: missing column\(s\) \['Finding Labels'\]"):
        open_dataset("chestxray14", root)
    csv_path.unlink()
    with pytest.raises(DatasetError, match="no Data_Entry_2017"):
        open_dataset("chestxray14", root)
    with pytest.raises(DatasetError, match="no images/"):
        open_dataset("chestxray14", tmp_path / "images")
