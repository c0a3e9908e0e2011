"""MNIST and Fashion-MNIST in the IDX format: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from msir_data.base import BadItemError, DatasetError, DatasetReader, Item

logger = logging.getLogger(__name__)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
SPLIT_PREFIXES = (("train", "train"), ("test", "t10k"))

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]


def _candidates(prefix: str, kind: str) -> list[str]:
    """Names of one IDX file: the official dashed name, the dotted one some mirrors use, gzipped or not."""
    dims = "idx3" if kind == "images" else "idx1"
    names = [f"{prefix}-{kind}-{dims}-ubyte", f"{prefix}-{kind}.{dims}-ubyte"]
    return [n + ext for n in names for ext in ("", ".gz")]


def find_file(folder: Path, prefix: str, kind: str) -> Path | None:
    for name in _candidates(prefix, kind):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_folder(root: Path) -> Path | None:
    """``root`` itself, a child folder (``fashion/``, ``MNIST/``...) or its ``raw/`` (torchvision layout)."""
    if not root.is_dir():
        return None
    folders = [root]
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folders += [child, child / "raw"]
    for folder in folders:
        if any(find_file(folder, prefix, "images") for _, prefix in SPLIT_PREFIXES):
            return folder
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (gzip detected from the content) as a uint8 array; checks the magic and the size."""
    what = "images (idx3)" if magic == IMAGES_MAGIC else "labels (idx1)"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read the IDX {what} file ({exc})") from exc
    if len(raw) < 4:
        raise DatasetError(f"{path}: {len(raw)} bytes, too short for an IDX {what} file")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DatasetError(f"{path}: magic number {found}, expected {magic} for an IDX {what} file")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, expected at least {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: {len(raw) - header} data bytes, expected {expected} for dimensions {list(dims)} "
            "(truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


class IdxReader(DatasetReader):
    """MNIST-style IDX pairs; splits train/test; ``load`` returns a 28x28 grey (mode ``L``) image."""

    def __init__(
        self,
        root: str | Path,
        *,
        variant: Literal["mnist", "fashion-mnist"] = "fashion-mnist",
        max_pixels: int | None = None,
    ) -> None:
        super().__init__(root, max_pixels=max_pixels)
        if variant not in ("mnist", "fashion-mnist"):
            raise ValueError(f"variant must be 'mnist' or 'fashion-mnist', got {variant!r}")
        self.name = variant
        self.class_names = list(FASHION_MNIST_CLASSES if variant == "fashion-mnist" else MNIST_CLASSES)
        folder = find_idx_folder(self.root)
        if folder is None:
            expected = ", ".join(_candidates("train", "images")[::2])
            raise DatasetError(f"{self.root}: no IDX images file found (expected e.g. {expected})")
        self.folder = folder
        self._arrays: dict[str, np.ndarray] = {}
        self._files: list[Path] = []
        items: list[Item] = []
        for split, prefix in SPLIT_PREFIXES:
            images_path = find_file(folder, prefix, "images")
            if images_path is None:
                continue
            labels_path = find_file(folder, prefix, "labels")
            if labels_path is None:
                raise DatasetError(
                    f"{images_path}: its labels file is missing; expected one of "
                    f"{_candidates(prefix, 'labels')} in {folder}"
                )
            items += self._read_pair(split, images_path, labels_path)
        self._set_items(items)

    def _read_pair(self, split: str, images_path: Path, labels_path: Path) -> list[Item]:
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{images_path}: {images.shape[0]} images but {labels_path.name} has {labels.shape[0]} "
                "labels; expected the same count"
            )
        # Ids do not depend on compression: gunzipping the files keeps every item id (and cache entries).
        file_id = images_path.name.removesuffix(".gz")
        self._arrays[file_id] = images
        self._files += [images_path, labels_path]
        items = []
        for i, label in enumerate(labels.tolist()):
            source = f"{images_path}#{i}"
            if label >= len(self.class_names):
                self.skipped.add(source, "label out of range", f"label {label} in {labels_path.name}")
                continue
            items.append(Item(f"{file_id}#{i}", (label,), split, source, None))
        return items

    def data_files(self) -> list[Path]:
        return list(self._files)

    def load(self, item: Item) -> Image.Image:
        file_id, _, index = item.item_id.rpartition("#")
        data = self._arrays.get(file_id)
        if data is None or not index.isdigit() or int(index) >= data.shape[0]:
            raise BadItemError(f"{item.source}: no such image in {self.name} at {self.folder}")
        return Image.fromarray(np.ascontiguousarray(data[int(index)]))


def guess_variant(root: Path) -> Literal["mnist", "fashion-mnist"]:
    """IDX files do not say which dataset they hold; folder names do (``fashion-mnist``, ``FashionMNIST``).

    Only the root's own name and the folders below it count: a parent folder named after a project must not
    decide.
    """
    names = [root.resolve().name]
    folder = find_idx_folder(root)
    if folder is not None:
        names += list(folder.relative_to(root).parts)
    return "fashion-mnist" if any("fashion" in n.lower() for n in names) else "mnist"
