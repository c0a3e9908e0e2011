"""open_dataset: kinds, options and auto-detection of every format."""

from __future__ import annotations

from pathlib import Path

import pytest

from msir_data import KINDS, DatasetError, DatasetReader, detect_kind, open_dataset
from tests.fixtures_formats import (
    write_chestxray,
    write_cifar10,
    write_cifar100,
    write_idx,
    write_image_folder,
    write_isic,
    write_manifest,
)


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (lambda p: write_cifar10(p), "cifar10"),
        (lambda p: write_cifar100(p), "cifar100"),
        (lambda p: write_idx(p / "FashionMNIST"), "fashion-mnist"),
        (lambda p: write_idx(p / "mnist"), "mnist"),
        (lambda p: write_image_folder(p / "cifar10", ["cat", "dog"], n=1, ext="jpg"), "imagefolder"),
        (lambda p: write_image_folder(p / "flat", ["cat", "dog"], n=1, split_dirs=False), "imagefolder"),
        (lambda p: write_isic(p, n_per_class=1), "isic2018"),
        (lambda p: write_isic(p, n_per_class=1, fmt="onehot"), "isic2018"),
        (lambda p: write_chestxray(p, patients=2), "chestxray14"),
        (lambda p: write_manifest(p / "manifest.csv", [("a.png", "x")]).parent, "manifest"),
        (lambda p: write_manifest(p / "list.csv", [("a.png", "x")]), "manifest"),
    ],
)
def test_auto_detects_every_format(tmp_path: Path, writer: object, expected: str) -> None:
    root = writer(tmp_path)  # type: ignore[operator]
    assert detect_kind(root) == expected
    reader = open_dataset("auto", root)
    assert isinstance(reader, DatasetReader)
    assert reader.name == expected and len(reader) > 0


def test_nothing_detected_names_root_and_kinds_tried(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"no known dataset format found; tried \['manifest', 'cifar10'") as info:
        open_dataset("auto", tmp_path)
    assert str(tmp_path) in str(info.value) and "imagefolder" in str(info.value)
    with pytest.raises(DatasetError, match="no such file or folder"):
        open_dataset("auto", tmp_path / "missing")


def test_unknown_kind_and_option(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "folder", ["a"], n=1)
    with pytest.raises(ValueError, match=r"unknown dataset kind 'imagenet'; expected one of \['cifar10'"):
        open_dataset("imagenet", root)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['test_fraction'\] .* accepted: \['max_pixels'\]"):
        open_dataset("imagefolder", root, test_fraction=0.1)
    with pytest.raises(ValueError, match=r"accepted: \['max_pixels'\]"):
        open_dataset("mnist", write_idx(tmp_path / "m"), variant="fashion-mnist")
    assert open_dataset("ImageFolder", root).name == "imagefolder"
    assert open_dataset("fashion_mnist", tmp_path / "m").name == "fashion-mnist"
    assert set(KINDS) == {
        "cifar10",
        "cifar100",
        "fashion-mnist",
        "mnist",
        "imagefolder",
        "isic2018",
        "chestxray14",
        "manifest",
        "auto",
    }
