"""CIFAR-10 / CIFAR-100 in the official "python version" format (pickled batches), without arbitrary pickle.

The official files are Python 2 pickles (protocol 2) of dicts holding a ``uint8 [N, 3072]`` array
(channel-major 32x32 RGB rows) and a list of labels. A :class:`RestrictedUnpickler` rebuilds numpy arrays and
nothing else, so a tampered file cannot run code: any other global is refused before it is looked up.
"""

from __future__ import annotations

import logging
import pickle
import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from msir_data.base import BadItemError, DatasetError, DatasetReader, Item

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]

logger = logging.getLogger(__name__)

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
IMAGE_BYTES = 3 * 32 * 32

# What numpy arrays need, under both module names numpy has pickled them with; nothing else.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals numpy arrays need; refuses anything else by name."""

    def __init__(self, file: Any, source: Path) -> None:
        # latin1: Python 2 ``str`` objects (the array bytes, the label names) come back byte for byte.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = sorted(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise DatasetError(
                f"{self._source}: refused to unpickle global {module}.{name}; a CIFAR batch may only "
                f"contain numpy arrays (allowed globals: {allowed})"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetError(f"{self._source}: refused persistent id {pid!r} in a CIFAR pickle")


def load_pickle(path: Path) -> dict[str, Any]:
    """Load one official CIFAR pickle with the restricted unpickler; keys come back as ``str``."""
    try:
        with path.open("rb") as fh:
            obj = RestrictedUnpickler(fh, path).load()
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found (expected an official CIFAR python-version batch)") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as exc:
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from exc
    except (OSError, struct.error, MemoryError) as exc:
        raise DatasetError(f"{path}: cannot read the CIFAR pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _names(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: expected a non-empty list {key!r} in the meta file, got {type(names).__name__}")
    return [_text(n) for n in names]


def _batch_arrays(batch: dict[str, Any], label_key: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(f"{path}: expected 'data' as a uint8 array of shape (N, {IMAGE_BYTES}), got {got}")
    labels = batch.get(label_key)
    if not isinstance(labels, list | np.ndarray) or len(labels) != data.shape[0]:
        n = len(labels) if isinstance(labels, list | np.ndarray) else type(labels).__name__
        raise DatasetError(f"{path}: expected {label_key!r} with {data.shape[0]} labels (one per row), got {n}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: {label_key!r} must hold integers ({exc})") from exc
    return data, label_array


class _CifarReader(DatasetReader):
    """Shared by CIFAR-10 and CIFAR-100: in-memory rows; ``load`` returns row ``i`` as a 32x32 RGB image."""

    dir_name = ""
    meta_name = ""
    markers: tuple[str, ...] = ()  # files that identify the folder (the meta file first)

    def __init__(self, root: str | Path, *, max_pixels: int | None = None) -> None:
        super().__init__(root, max_pixels=max_pixels)
        self.folder = self._find_folder(self.root)
        self._arrays: dict[str, np.ndarray] = {}
        self._files: list[Path] = []

    @classmethod
    def _find_folder(cls, root: Path) -> Path:
        """``root`` may be the official folder itself or the folder that contains it."""
        for candidate in (root / cls.dir_name, root):
            if all((candidate / name).is_file() for name in cls.markers):
                return candidate
        raise DatasetError(
            f"{root}: neither {cls.dir_name}/ nor {root.name}/ holds {list(cls.markers)}; expected the "
            f"official {cls.dir_name} folder or its parent"
        )

    @classmethod
    def detect(cls, root: Path) -> bool:
        try:
            cls._find_folder(root)
        except DatasetError:
            return False
        return True

    def _read_split(self, split: str, files: tuple[str, ...], label_key: str) -> list[Item]:
        items: list[Item] = []
        for file_name in files:
            path = self.folder / file_name
            data, labels = _batch_arrays(load_pickle(path), label_key, path)
            self._arrays[file_name] = data
            self._files.append(path)
            for i, label in enumerate(labels.tolist()):
                source = f"{path}#{i}"
                if not 0 <= label < len(self.class_names):
                    self.skipped.add(source, "label out of range", f"{label_key}={label}")
                    continue
                items.append(Item(f"{file_name}#{i}", (label,), split, source, None))
        return items

    def data_files(self) -> list[Path]:
        return list(self._files)

    def load(self, item: Item) -> Image.Image:
        file_name, _, index = item.item_id.rpartition("#")
        data = self._arrays.get(file_name)
        if data is None or not index.isdigit() or int(index) >= data.shape[0]:
            raise BadItemError(f"{item.source}: no such row in {self.name} at {self.folder}")
        row = data[int(index)].reshape(3, 32, 32).transpose(1, 2, 0)
        return Image.fromarray(np.ascontiguousarray(row))


class Cifar10Reader(_CifarReader):
    """``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; splits train/test."""

    name = "cifar10"
    dir_name = CIFAR10_DIR
    meta_name = "batches.meta"
    markers = ("batches.meta", "data_batch_1")

    def __init__(self, root: str | Path, *, max_pixels: int | None = None) -> None:
        super().__init__(root, max_pixels=max_pixels)
        meta_path = self.folder / self.meta_name
        self.class_names = _names(load_pickle(meta_path), "label_names", meta_path)
        self._files.append(meta_path)
        items = self._read_split("train", CIFAR10_TRAIN, "labels")
        items += self._read_split("test", ("test_batch",), "labels")
        self._set_items(items)


class Cifar100Reader(_CifarReader):
    """``cifar-100-python/{train, test, meta}``; fine labels (``label_level="coarse"``: 20 superclasses)."""

    name = "cifar100"
    dir_name = CIFAR100_DIR
    meta_name = "meta"
    markers = ("meta", "train")

    def __init__(
        self,
        root: str | Path,
        *,
        label_level: Literal["fine", "coarse"] = "fine",
        max_pixels: int | None = None,
    ) -> None:
        if label_level not in ("fine", "coarse"):
            raise ValueError(f"label_level must be 'fine' or 'coarse', got {label_level!r}")
        super().__init__(root, max_pixels=max_pixels)
        meta_path = self.folder / self.meta_name
        self.class_names = _names(load_pickle(meta_path), f"{label_level}_label_names", meta_path)
        self._files.append(meta_path)
        items = self._read_split("train", ("train",), f"{label_level}_labels")
        items += self._read_split("test", ("test",), f"{label_level}_labels")
        self._set_items(items)
