"""ISIC-2018 Task 3: HAM10000 metadata and the one-hot ground-truth CSV."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from msir_data import DatasetError, open_dataset
from msir_data.isic import ISIC_CLASSES
from tests.fixtures_formats import write_image, write_isic, write_isic_task3_64px


def _lesion_of(root: Path) -> dict[str, str]:
    lines = (root / "HAM10000_metadata.csv").read_text(encoding="utf-8").splitlines()[1:]
    return {line.split(",")[1]: line.split(",")[0] for line in lines}


def test_ham_metadata_labels_and_lesion_wise_split(tmp_path: Path) -> None:
    root = write_isic(tmp_path, n_per_class=12, images_per_lesion=3)
    reader = open_dataset("isic2018", root, test_fraction=0.3)
    assert reader.class_names == ISIC_CLASSES == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert not reader.multi_label
    assert len(reader) == 84 and not reader.skipped
    assert set(reader.splits()) == {"train", "test"}
    item = next(i for i in reader.items() if i.item_id == "images/ISIC_0024406.jpg")  # class 1 = nv
    assert item.labels == (ISIC_CLASSES.index("NV"),)
    assert reader.load(item).size == (12, 9)
    lesions = _lesion_of(root)
    splits_of_lesion: dict[str, set[str]] = defaultdict(set)
    for i in reader.items():
        splits_of_lesion[lesions[Path(i.item_id).stem]].add(i.split)
    assert all(len(s) == 1 for s in splits_of_lesion.values())  # one lesion never straddles splits
    again = open_dataset("isic2018", root, test_fraction=0.3)
    assert [(i.item_id, i.split) for i in again.items()] == [(i.item_id, i.split) for i in reader.items()]


def test_ham_bad_rows_are_skipped_and_logged(tmp_path: Path) -> None:
    root = write_isic(tmp_path, n_per_class=2)
    csv_path = root / "HAM10000_metadata.csv"
    rows = csv_path.read_text(encoding="utf-8")
    rows += "HAM_9,ISIC_0099999,nv,histo,40.0,male,back\n"  # image missing
    rows += "HAM_8,ISIC_0024306,mel,histo,40.0,male,back\n"  # duplicate image
    rows += "HAM_7,ISIC_0024307,melanoma,histo,40.0,male,back\n"  # unknown dx
    csv_path.write_text(rows, encoding="utf-8")
    reader = open_dataset("isic2018", root)
    assert len(reader) == 14
    assert reader.skipped.summary() == {"image file missing": 1, "duplicate image": 1, "unknown label": 1}
    sources = {e.reason: e.source for e in reader.skipped}
    assert sources["image file missing"] == f"{csv_path}:16"
    assert "melanoma" in next(e.detail for e in reader.skipped if e.reason == "unknown label")


def test_one_hot_ground_truth(tmp_path: Path) -> None:
    root = write_isic(tmp_path, n_per_class=3, fmt="onehot", images_dir="ISIC2018_Task3_Training_Input")
    gt = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    gt.write_text(
        gt.read_text(encoding="utf-8")
        + "ISIC_0024306,1.0,1.0,0.0,0.0,0.0,0.0,0.0\n"  # two hot columns (and a duplicate id)
        + "ISIC_0024307,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n"  # none hot
        + "ISIC_0024308,x,0.0,0.0,0.0,0.0,0.0,0.0\n"  # not a number
        + "ISIC_0000000,0.0,0.0,0.0,0.0,0.0,0.0,1.0\n",  # image missing
        encoding="utf-8",
    )
    reader = open_dataset("auto", root)
    assert reader.name == "isic2018"
    assert len(reader) == 21
    assert reader.skipped.summary() == {
        "not exactly one class": 2,
        "bad one-hot value": 1,
        "image file missing": 1,
    }
    by_id = {Path(i.item_id).stem: i for i in reader.items()}
    assert by_id["ISIC_0024506"].labels == (2,)  # class 2 = BCC
    assert by_id["ISIC_0024306"].item_id == "ISIC2018_Task3_Training_Input/ISIC_0024306.jpg"


def test_official_ground_truth_files_give_official_splits(tmp_path: Path) -> None:
    root = write_isic(tmp_path, n_per_class=2, fmt="onehot")
    gt_dir = root / "ISIC2018_Task3_Validation_GroundTruth"
    gt_dir.mkdir()
    write_image(root / "val_images" / "ISIC_0034321.jpg", colour=3)
    (gt_dir / "ISIC2018_Task3_Validation_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0034321,0.0,0.0,0.0,1.0,0.0,0.0,0.0\n", encoding="utf-8"
    )
    reader = open_dataset("isic2018", root)
    assert reader.splits() == ["train", "val"]
    assert reader.count("train") == 14
    assert [(i.item_id, i.labels) for i in reader.items("val")] == [("val_images/ISIC_0034321.jpg", (3,))]


def test_subset_table_is_preferred_over_the_full_one(tmp_path: Path) -> None:
    # The real sample ships the full 10,015-row metadata beside the subset table of the images present.
    root = write_isic(tmp_path, n_per_class=2)
    full = (root / "HAM10000_metadata.csv").read_text(encoding="utf-8")
    (root / "HAM10000_metadata_subset.csv").write_text(full, encoding="utf-8")
    extra = "".join(f"HAM_X{i},ISIC_01{i:05d},nv,histo,40.0,male,back\n" for i in range(30))
    (root / "HAM10000_metadata.csv").write_text(full + extra, encoding="utf-8")
    reader = open_dataset("isic2018", root)
    assert len(reader) == 14 and not reader.skipped
    explicit = open_dataset("isic2018", root, csv="HAM10000_metadata.csv")
    assert len(explicit) == 14 and explicit.skipped.summary() == {"image file missing": 30}


def test_structural_errors(tmp_path: Path) -> None:
    root = write_isic(tmp_path, n_per_class=1)
    (root / "HAM10000_metadata.csv").unlink()
    with pytest.raises(DatasetError, match="no ISIC label file"):
        open_dataset("isic2018", root)
    with pytest.raises(DatasetError, match=r"missing\.csv: label file not found"):
        open_dataset("isic2018", root, csv="missing.csv")
    (root / "other.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"other.csv: neither an ISIC-2018 ground-truth CSV"):
        open_dataset("isic2018", root, csv="other.csv")
    with pytest.raises(ValueError, match="test_fraction"):
        open_dataset("isic2018", root, test_fraction=1.5)


def test_task3_64px_layout_official_split_and_validation_by_lesion(tmp_path: Path) -> None:
    """The complete 64 px set's layout: official train/test, validation carved from train by lesion, per class."""
    per_class = (30, 60, 15, 12, 30, 9, 9)
    root = write_isic_task3_64px(tmp_path, per_class, test_per_class=2, images_per_lesion=3)
    reader = open_dataset("isic2018", root, val_fraction=0.2)
    assert reader.splits() == ["train", "val", "test"]
    assert not reader.skipped
    assert reader.count("test") == 14 and reader.count("train") + reader.count("val") == sum(per_class)
    test_ids = {Path(i.item_id).stem for i in reader.items() if i.split == "test"}
    assert test_ids == {f"ISIC_{n:07d}" for n in range(34524, 34524 + 14)}  # the official test images, only them
    lesions = _lesion_of(root)
    splits_of_lesion: dict[str, set[str]] = defaultdict(set)
    val_per_class = [0] * 7
    for i in reader.items():
        if i.split != "test":
            splits_of_lesion[lesions[Path(i.item_id).stem]].add(i.split)
        if i.split == "val":
            val_per_class[i.labels[0]] += 1
    assert all(len(s) == 1 for s in splits_of_lesion.values())  # no lesion in both train and val
    # Stratified: every class gives about 20 % of its images, whole lesions of 3 at a time.
    for c, n in enumerate(per_class):
        assert abs(val_per_class[c] - 0.2 * n) <= 3, (c, val_per_class)
    again = open_dataset("isic2018", root, val_fraction=0.2)
    assert [(i.item_id, i.split) for i in again.items()] == [(i.item_id, i.split) for i in reader.items()]
    other_seed = open_dataset("isic2018", root, val_fraction=0.2, seed=1)
    assert {i.item_id for i in other_seed.items() if i.split == "val"} != {
        i.item_id for i in reader.items() if i.split == "val"
    }


def test_task3_64px_without_val_fraction_has_train_and_test_only(tmp_path: Path) -> None:
    root = write_isic_task3_64px(tmp_path, (6,) * 7, test_per_class=1)
    reader = open_dataset("isic2018", root)
    assert reader.splits() == ["train", "test"]
    assert reader.count("train") == 42 and reader.count("test") == 7


def test_the_reader_names_the_diagnoses_in_full(tmp_path: Path) -> None:
    root = write_isic_task3_64px(tmp_path, (3,) * 7, test_per_class=1)
    reader = open_dataset("isic2018", root)
    assert set(reader.class_descriptions) == set(ISIC_CLASSES)
    assert reader.class_descriptions["MEL"] == "melanoma" and reader.class_descriptions["NV"] == "melanocytic nevus"
