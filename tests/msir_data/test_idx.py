"""MNIST / Fashion-MNIST IDX files, gzipped or not."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from msir_data import DatasetError, open_dataset
from msir_data.idx import FASHION_MNIST_CLASSES
from tests.fixtures_formats import idx_bytes, write_idx


@pytest.mark.parametrize("gzipped", [True, False])
def test_reads_idx_pairs(tmp_path: Path, gzipped: bool) -> None:
    reader = open_dataset("fashion-mnist", write_idx(tmp_path, n_train=20, n_test=10, gzipped=gzipped))
    assert reader.name == "fashion-mnist"
    assert reader.class_names == FASHION_MNIST_CLASSES
    assert reader.class_names[0] == "T-shirt/top" and reader.class_names[9] == "Ankle boot"
    assert reader.splits() == ["train", "test"]
    assert reader.count("train") == 20 and reader.count("test") == 10
    items = list(reader.items("test"))
    # Ids ignore compression, so gunzipping the files keeps them (and caches) valid.
    assert items[3].item_id == "t10k-images-idx3-ubyte#3"
    assert items[3].labels == (3,) and items[3].path is None
    img = reader.load(items[3])
    assert img.mode == "L" and img.size == (28, 28)
    assert np.asarray(img).min() == np.asarray(img).max() == 60


def test_mnist_variant_and_auto_detection(tmp_path: Path) -> None:
    mnist = open_dataset("mnist", write_idx(tmp_path / "digits"))
    assert mnist.name == "mnist" and mnist.class_names == [str(i) for i in range(10)]
    assert open_dataset("auto", tmp_path / "digits").name == "mnist"
    write_idx(tmp_path / "fashion-mnist" / "raw")
    assert open_dataset("auto", tmp_path / "fashion-mnist").name == "fashion-mnist"


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    root = write_idx(tmp_path, gzipped=False)
    labels = (root / "train-labels-idx1-ubyte").read_bytes()
    (root / "train-images-idx3-ubyte").write_bytes(labels)  # a labels file where images are expected
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: magic number 2049, expected 2051"):
        open_dataset("fashion-mnist", root)


def test_count_mismatch_and_truncation(tmp_path: Path) -> None:
    root = write_idx(tmp_path, n_train=20, gzipped=True)
    labels = root / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(19, np.uint8))))
    with pytest.raises(DatasetError, match=r"20 images but train-labels-idx1-ubyte.gz has 19 labels"):
        open_dataset("fashion-mnist", root)
    images = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: .* expected 15680 .*truncated"):
        open_dataset("fashion-mnist", root)
    images.write_bytes(images.read_bytes()[:50])  # a cut gzip stream
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: cannot read"):
        open_dataset("fashion-mnist", root)


def test_missing_labels_file_and_missing_dataset(tmp_path: Path) -> None:
    root = write_idx(tmp_path / "a")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte.gz: its labels file is missing"):
        open_dataset("mnist", root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no IDX images file found"):
        open_dataset("mnist", tmp_path / "empty")


def test_out_of_range_label_skipped(tmp_path: Path) -> None:
    root = write_idx(tmp_path, n_train=4, gzipped=False)
    (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 4) + bytes([1, 2, 200, 3]))
    reader = open_dataset("mnist", root)
    assert [i.labels for i in reader.items("train")] == [(1,), (2,), (3,)]
    assert reader.skipped.summary() == {"label out of range": 1}


def test_variant_guess_ignores_parent_folders(tmp_path: Path) -> None:
    root = write_idx(tmp_path / "fashion-project" / "mnist")
    assert open_dataset("auto", root).name == "mnist"
