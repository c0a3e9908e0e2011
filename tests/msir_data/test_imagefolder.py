"""ImageFolder layouts, extensions, hidden and non-image files, undecodable images."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import ImageDecodeError
from msir_data import DatasetError, open_dataset
from tests.fixtures_formats import (
    class_colour,
    write_image,
    write_image_folder,
    write_not_an_image,
    write_truncated_jpeg,
)


def test_split_layout_like_the_cifar10_jpeg_copy(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "cifar10", ["airplane", "automobile", "bird"], n=3, ext="jpg")
    (root / "SOURCE.txt").write_text("provenance\n", encoding="utf-8")
    for kind in ("imagefolder", "auto"):
        reader = open_dataset(kind, root)
        assert reader.name == "imagefolder"
        assert reader.class_names == ["airplane", "automobile", "bird"]
        assert reader.splits() == ["train", "test"]
        assert reader.count("train") == 9 and reader.count("test") == 9
        assert not reader.skipped
    item = next(i for i in reader.items("train") if i.item_id == "train/bird/0002.jpg")
    assert item.labels == (2,) and item.path == root / "train" / "bird" / "0002.jpg"
    assert item.source == str(item.path)
    img = reader.load(item)
    assert img.size == (16, 16)
    assert all(abs(a - b) <= 3 for a, b in zip(img.getpixel((8, 8)), class_colour(2), strict=True))


def test_flat_layout_is_one_split(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ["b", "a"], n=2, split_dirs=False)
    reader = open_dataset("imagefolder", root)
    assert reader.splits() == ["all"]
    assert reader.class_names == ["a", "b"]
    assert [i.item_id for i in reader.items()] == ["a/0000.png", "a/0001.png", "b/0000.png", "b/0001.png"]


def test_validation_folder_names_become_val(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ["x"], n=1, splits=("train", "validation", "test"))
    assert open_dataset("imagefolder", root).splits() == ["train", "val", "test"]
    write_image_folder(tmp_path, ["x"], n=1, splits=("val",))
    with pytest.raises(DatasetError, match="would be split 'val'"):
        open_dataset("imagefolder", root)


def test_extensions_hidden_files_and_non_images(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i, ext in enumerate(["jpg", "JPEG", "png", "webp", "bmp", "tif", "TIFF", "gif"]):
        write_image(root / "cls" / f"img{i}.{ext}", colour=1)
    write_image(root / "cls" / "nested" / "deep.png")
    write_image(root / "cls" / ".hidden.png")
    write_image(root / ".hidden_dir" / "a.png")
    (root / "cls" / "notes.txt").write_text("x", encoding="utf-8")
    (root / "cls" / "Thumbs.db").write_bytes(b"\0")
    write_image(root / "stray.png")  # an image outside any class folder: skipped, not silently lost
    reader = open_dataset("imagefolder", root)
    assert reader.class_names == ["cls"]
    assert len(reader) == 9
    assert "cls/nested/deep.png" in {i.item_id for i in reader.items()}
    assert reader.skipped.summary() == {"not an image file extension": 2, "image outside a class folder": 1}
    assert {Path(e.source).name for e in reader.skipped} == {"notes.txt", "Thumbs.db", "stray.png"}


def test_undecodable_images_raise_image_decode_error_naming_the_file(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ["a"], n=1, split_dirs=False)
    write_truncated_jpeg(root / "a" / "truncated.jpg")
    write_not_an_image(root / "a" / "renamed.jpg")
    (root / "a" / "empty.png").write_bytes(b"")
    reader = open_dataset("imagefolder", root)
    assert len(reader) == 4  # listing does not decode; loading reports
    for name in ("truncated.jpg", "renamed.jpg", "empty.png"):
        item = next(i for i in reader.items() if i.item_id == f"a/{name}")
        with pytest.raises(ImageDecodeError, match=name):
            reader.load(item)


def test_max_pixels_is_enforced_on_load(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, ["a"], n=1, size=(64, 64), split_dirs=False)
    reader = open_dataset("imagefolder", root, max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        reader.load(next(reader.items()))


def test_structural_errors(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "mixed", ["a"], n=1, splits=("train",))
    write_image(root / "cat" / "x.png")
    with pytest.raises(DatasetError, match=r"mixes split folders \['train'\] with other folders \['cat'\]"):
        open_dataset("imagefolder", root)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images in class folders"):
        open_dataset("imagefolder", tmp_path / "empty")
    with pytest.raises(DatasetError, match="not a folder"):
        open_dataset("imagefolder", tmp_path / "nope")
