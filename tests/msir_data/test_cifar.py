"""CIFAR-10/100 official pickles through the restricted unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from msir_data import BadItemError, DatasetError, Item, open_dataset
from msir_data.cifar import load_pickle
from tests.fixtures_formats import CIFAR10_CLASSES, class_colour, py2_pickle, write_cifar10, write_cifar100


def test_cifar10_reads_official_layout(tmp_path: Path) -> None:
    reader = open_dataset("cifar10", write_cifar10(tmp_path, n_per_class=2))
    assert reader.name == "cifar10"
    assert reader.class_names == CIFAR10_CLASSES
    assert not reader.multi_label
    assert reader.splits() == ["train", "test"]
    assert reader.count("train") == 5 * 20 and reader.count("test") == 20
    items = list(reader.items("test"))
    assert items[0].item_id == "test_batch#0" and items[0].path is None
    assert items[0].source.endswith("cifar-10-batches-py/test_batch#0")
    assert [i.labels for i in items[:4]] == [(0,), (0,), (1,), (1,)]
    assert len({i.item_id for i in reader.items()}) == len(reader)
    assert not reader.skipped


def test_cifar10_load_returns_the_row_as_rgb(tmp_path: Path) -> None:
    reader = open_dataset("cifar10", write_cifar10(tmp_path))
    for item in list(reader.items("train"))[:12]:
        img = reader.load(item)
        assert img.mode == "RGB" and img.size == (32, 32)
        assert img.getpixel((0, 0)) == class_colour(item.labels[0])
    with pytest.raises(BadItemError, match="no such row"):
        reader.load(Item("data_batch_1#999", (0,), "train", "x", None))


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    reader = open_dataset("cifar10", tmp_path / "cifar-10-batches-py")
    assert len(reader) == 60
    assert open_dataset("auto", tmp_path).name == "cifar10"


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path)
    fine = open_dataset("cifar100", root)
    assert len(fine.class_names) == 100 and fine.class_names[7] == "fine_07"
    assert fine.count("train") == 100 and fine.count("test") == 100
    labels = [i.labels[0] for i in fine.items("train")]
    assert labels == list(range(100))
    coarse = open_dataset("cifar100", root, label_level="coarse")
    assert len(coarse.class_names) == 20
    assert [i.labels[0] for i in coarse.items("train")][:10] == [0] * 5 + [1] * 5
    assert open_dataset("auto", root).name == "cifar100"


def test_malicious_pickle_is_refused_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    root = write_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_3: refused to unpickle global (posix|os)\.system"):
        open_dataset("cifar10", root)
    assert not marker.exists()


def test_python3_bytes_encoding_global_is_refused_too(tmp_path: Path) -> None:
    # Python 3's protocol 2 pickles bytes via _codecs.encode: not what the official files contain.
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": b"abc"}, protocol=2))
    with pytest.raises(DatasetError, match=r"_codecs\.encode"):
        load_pickle(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"uint8 array of shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "with 2 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "with 2 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"x", b"y"]}, "must hold integers"),
        ([1, 2, 3], "expected a pickled dict"),
    ],
)
def test_structurally_wrong_batches_name_the_file(tmp_path: Path, content: object, message: str) -> None:
    root = write_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(py2_pickle(content))
    with pytest.raises(DatasetError, match=message) as info:
        open_dataset("cifar10", root)
    assert "test_batch" in str(info.value)


def test_truncated_and_missing_batches(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DatasetError, match="data_batch_2: not a readable CIFAR pickle"):
        open_dataset("cifar10", root)
    batch.unlink()
    with pytest.raises(DatasetError, match="data_batch_2: file not found"):
        open_dataset("cifar10", root)
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py"):
        open_dataset("cifar10", tmp_path / "elsewhere")


def test_out_of_range_label_is_skipped_and_logged(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path)
    data = np.zeros((3, 3072), np.uint8)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(py2_pickle({b"data": data, b"labels": [1, 10, 2]}))
    reader = open_dataset("cifar10", root)
    assert [i.item_id for i in reader.items("test")] == ["test_batch#0", "test_batch#2"]
    assert reader.skipped.summary() == {"label out of range": 1}
    assert reader.skipped.entries[0].source.endswith("test_batch#1")
