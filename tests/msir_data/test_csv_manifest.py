"""CSV manifests: single- and multi-label, splits, paths, bad rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from msir_data import DatasetError, open_dataset
from tests.fixtures_formats import write_image, write_manifest


def test_single_label_with_split_column(tmp_path: Path) -> None:
    rows = [("img/a.png", "dog", "train"), ("img/b.png", "cat", "train"), ("img/c.png", "dog", "test")]
    csv_path = write_manifest(tmp_path / "manifest.csv", rows)
    reader = open_dataset("manifest", csv_path)
    assert not reader.multi_label
    assert reader.class_names == ["cat", "dog"]
    assert reader.splits() == ["train", "test"]
    assert [(i.item_id, i.labels, i.split) for i in reader.items()] == [
        ("img/a.png", (1,), "train"),
        ("img/b.png", (0,), "train"),
        ("img/c.png", (1,), "test"),
    ]
    item = next(reader.items("test"))
    assert item.path == tmp_path / "img" / "c.png"
    assert reader.load(item).size == (8, 8)
    # The folder holding manifest.csv works too, and auto finds it.
    assert len(open_dataset("manifest", tmp_path)) == 3
    assert open_dataset("auto", csv_path).name == "manifest"


def test_multi_label_allows_empty_labels(tmp_path: Path) -> None:
    rows = [("a.png", "x|y"), ("b.png", ""), ("c.png", "z"), ("d.png", "y | x | y")]
    reader = open_dataset("manifest", write_manifest(tmp_path / "m.csv", rows))
    assert reader.multi_label
    assert reader.splits() == ["all"]
    assert reader.class_names == ["x", "y", "z"]
    assert [i.labels for i in reader.items()] == [(0, 1), (), (2,), (0, 1)]
    assert not reader.skipped


def test_bad_rows_skipped_and_logged(tmp_path: Path) -> None:
    absolute = write_image(tmp_path / "elsewhere" / "abs.png")
    rows = [
        ("a.png", "cat"),
        ("gone.png", "cat"),  # file missing
        ("b.png", ""),  # empty label in a single-label manifest
        ("a.png", "dog"),  # duplicate path
        (str(absolute), "dog"),
    ]
    csv_path = write_manifest(tmp_path / "data" / "m.csv", rows, missing=["gone.png"])
    reader = open_dataset("manifest", csv_path)
    assert [(i.item_id, i.labels) for i in reader.items()] == [("a.png", (0,)), (absolute.as_posix(), (1,))]
    assert reader.skipped.summary() == {"image file missing": 1, "duplicate path": 1, "empty label": 1}
    assert {e.source for e in reader.skipped} == {f"{csv_path}:3", f"{csv_path}:4", f"{csv_path}:5"}


def test_class_names_option_and_numeric_labels(tmp_path: Path) -> None:
    rows = [("a.png", "10"), ("b.png", "2"), ("c.png", "9")]
    csv_path = write_manifest(tmp_path / "m.csv", rows)
    assert open_dataset("manifest", csv_path).class_names == ["2", "9", "10"]
    fixed = open_dataset("manifest", csv_path, class_names=["9", "10"])
    assert [i.labels for i in fixed.items()] == [(1,), (0,)]
    assert fixed.skipped.summary() == {"unknown label": 1}


def test_header_is_required(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("a.png,cat\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"m.csv: missing column\(s\) \['path', 'label'\]"):
        open_dataset("manifest", csv_path)
    with pytest.raises(DatasetError, match=r"manifest\.csv"):
        open_dataset("manifest", tmp_path / "nothing_here")
