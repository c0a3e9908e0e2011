"""Decode cache: arrays, skips, cache hits and invalidation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import PreprocessSpec
from msir_data import BadItemError, DatasetReader, Item, open_dataset
from msir_data import cache as cache_module
from msir_data.cache import cached_split
from tests.fixtures_formats import (
    cifar_rows,
    class_colour,
    write_chestxray,
    write_cifar10,
    write_image,
    write_image_folder,
    write_not_an_image,
    write_truncated_jpeg,
)

SPEC = PreprocessSpec(image_size=(16, 16), channels=3)


def _folder_with_bad_files(root: Path) -> Path:
    write_image_folder(root, ["a", "b"], n=3, split_dirs=False)
    write_truncated_jpeg(root / "a" / "0001_truncated.jpg")
    write_not_an_image(root / "b" / "0000_renamed.jpg")
    return root


def _no_decoding(*args: object, **kwargs: object) -> None:
    raise AssertionError("the cache should have been hit, not decoded again")


def test_decodes_to_uint8_memmap_and_excludes_bad_items(tmp_path: Path) -> None:
    reader = open_dataset("imagefolder", _folder_with_bad_files(tmp_path / "ds"))
    cached = cached_split(reader, "all", SPEC, tmp_path / "cache", workers=0, progress=False)
    assert isinstance(cached.images, np.memmap) and cached.images.dtype == np.uint8
    assert cached.images.shape == (6, 3, 16, 16)
    assert cached.labels.dtype == np.int64 and cached.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "a/0001_truncated.jpg" not in cached.item_ids and "b/0000_renamed.jpg" not in cached.item_ids
    assert cached.item_ids == [i.item_id for i in reader.items() if "_" not in Path(i.item_id).stem]
    for row, label in enumerate(cached.labels):
        assert cached.images[row, :, 8, 8].tolist() == list(class_colour(int(label)))
    assert reader.skipped.summary() == {"decode failed": 2}
    assert {Path(e.source).name for e in cached.skipped} == {"0001_truncated.jpg", "0000_renamed.jpg"}
    assert all(Path(e.source).name in e.detail for e in reader.skipped)
    assert cached.class_names == ["a", "b"] and not cached.multi_label
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cached.path.name]  # no temp folder left


def test_second_call_hits_the_cache_and_replays_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder_with_bad_files(tmp_path / "ds")
    first = cached_split(open_dataset("imagefolder", root), "all", SPEC, tmp_path / "cache", workers=0, progress=False)
    monkeypatch.setattr(cache_module, "open_image", _no_decoding)
    monkeypatch.setattr(cache_module, "to_uint8", _no_decoding)
    reader = open_dataset("imagefolder", root)
    second = cached_split(reader, "all", SPEC, tmp_path / "cache", workers=0, progress=False)
    assert second.path == first.path
    assert second.item_ids == first.item_ids
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert reader.skipped.summary() == {"decode failed": 2}  # a cached run still reports what was left out


def test_changed_spec_or_file_gives_a_new_cache(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "ds", ["a", "b"], n=2, split_dirs=False)
    cache_dir = tmp_path / "cache"
    first = cached_split(open_dataset("imagefolder", root), "all", SPEC, cache_dir, workers=0, progress=False)
    grey = PreprocessSpec(image_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,))
    other = cached_split(open_dataset("imagefolder", root), "all", grey, cache_dir, workers=0, progress=False)
    assert other.path != first.path and other.images.shape == (4, 1, 8, 8)
    changed = root / "a" / "0000.png"
    write_image(changed, colour=5)
    os.utime(changed, ns=(1, 1))
    again = cached_split(open_dataset("imagefolder", root), "all", SPEC, cache_dir, workers=0, progress=False)
    assert again.path != first.path
    assert again.images[0, :, 0, 0].tolist() == list(class_colour(5))
    assert first.images[0, :, 0, 0].tolist() == list(class_colour(0))  # the old cache is untouched


def test_multi_label_labels_are_multi_hot(tmp_path: Path) -> None:
    reader = open_dataset("chestxray14", write_chestxray(tmp_path / "cxr", patients=2, images_per_patient=3))
    grey = PreprocessSpec(image_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,))
    cached = cached_split(reader, "train", grey, tmp_path / "cache", workers=0, progress=False)
    items = list(reader.items("train"))
    assert cached.multi_label and cached.labels.dtype == np.uint8
    assert cached.labels.shape == (len(items), 14) and cached.images.shape == (len(items), 1, 8, 8)
    for row, item in enumerate(items):
        assert np.flatnonzero(cached.labels[row]).tolist() == list(item.labels)


def test_in_memory_cifar_rows_are_cached_exactly(tmp_path: Path) -> None:
    reader = open_dataset("cifar10", write_cifar10(tmp_path / "c"))
    spec = PreprocessSpec.for_dataset("cifar10", 32)
    cached = cached_split(reader, "test", spec, tmp_path / "cache", workers=0, progress=False)
    expected = cifar_rows(list(range(10)), seed=5).reshape(10, 3, 32, 32)  # test_batch is written 6th
    np.testing.assert_array_equal(cached.images, expected)
    assert cached.item_ids[0] == "test_batch#0" and cached.labels.tolist() == list(range(10))


def test_process_pool_matches_in_process_decode(tmp_path: Path) -> None:
    root = _folder_with_bad_files(tmp_path / "ds")
    serial = cached_split(open_dataset("imagefolder", root), "all", SPEC, tmp_path / "c1", workers=0, progress=False)
    reader = open_dataset("imagefolder", root)
    pooled = cached_split(reader, "all", SPEC, tmp_path / "c2", workers=2, chunk_size=2, progress=True)
    assert pooled.item_ids == serial.item_ids
    np.testing.assert_array_equal(pooled.images, serial.images)
    assert reader.skipped.summary() == {"decode failed": 2}


def test_unreadable_cache_is_rebuilt(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "ds", ["a"], n=2, split_dirs=False)
    first = cached_split(open_dataset("imagefolder", root), "all", SPEC, tmp_path / "cache", workers=0, progress=False)
    images = first.path / "images.npy"
    del first
    images.write_bytes(images.read_bytes()[:100])
    rebuilt = cached_split(
        open_dataset("imagefolder", root), "all", SPEC, tmp_path / "cache", workers=0, progress=False
    )
    assert rebuilt.images.shape == (2, 3, 16, 16)


def test_every_item_failing_gives_an_empty_cache(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_not_an_image(root / "a" / "x.png")
    reader: DatasetReader = open_dataset("imagefolder", root)
    cached = cached_split(reader, "all", SPEC, tmp_path / "cache", workers=0, progress=False)
    assert len(cached) == 0 and cached.images.shape == (0, 3, 16, 16) and cached.labels.shape == (0,)
    assert reader.skipped.summary() == {"decode failed": 1}


class _ArrayReader(DatasetReader):
    """A reader with its own ``load`` (in-memory pixels), one item of which cannot be loaded."""

    name = "arrays"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.class_names = ["x", "y"]
        self._set_items([Item(f"arr#{i}", (i % 2,), "all", f"arr#{i}", None) for i in range(3)])

    def load(self, item: Item) -> Image.Image:
        if item.item_id == "arr#1":
            raise BadItemError(f"{item.source}: row is corrupt")
        return Image.new("RGB", (4, 4), class_colour(int(item.item_id[-1])))


def test_in_memory_load_failure_is_skipped(tmp_path: Path) -> None:
    reader = _ArrayReader(tmp_path)
    cached = cached_split(reader, "all", SPEC, tmp_path / "cache", workers=0, progress=False)
    assert cached.item_ids == ["arr#0", "arr#2"] and cached.labels.tolist() == [0, 0]
    assert cached.images[1, :, 0, 0].tolist() == list(class_colour(2))
    assert [(e.source, e.reason, e.detail) for e in reader.skipped] == [
        ("arr#1", "decode failed", "arr#1: row is corrupt")
    ]
