"""``open_dataset(kind, root, **options)``: the one entry point, with auto-detection of the format."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from msir_data import chestxray, csv_manifest, imagefolder, isic
from msir_data.base import DatasetError, DatasetReader
from msir_data.chestxray import ChestXray14Reader
from msir_data.cifar import Cifar10Reader, Cifar100Reader
from msir_data.csv_manifest import ManifestReader
from msir_data.idx import IdxReader, find_idx_folder, guess_variant
from msir_data.imagefolder import ImageFolderReader
from msir_data.isic import IsicReader

logger = logging.getLogger(__name__)

READERS: dict[str, Callable[..., DatasetReader]] = {
    "cifar10": Cifar10Reader,
    "cifar100": Cifar100Reader,
    "fashion-mnist": partial(IdxReader, variant="fashion-mnist"),
    "mnist": partial(IdxReader, variant="mnist"),
    "imagefolder": ImageFolderReader,
    "isic2018": IsicReader,
    "chestxray14": ChestXray14Reader,
    "manifest": ManifestReader,
}
KINDS = (*READERS, "auto")


def _idx_kind(root: Path) -> str | None:
    return guess_variant(root) if find_idx_folder(root) is not None else None


# Most specific first: a folder of class folders matches almost anything, so image folders come last.
DETECTORS: list[tuple[str, Callable[[Path], bool | str | None]]] = [
    ("manifest", lambda root: root.is_file() and csv_manifest.detect(root)),
    ("cifar10", Cifar10Reader.detect),
    ("cifar100", Cifar100Reader.detect),
    ("mnist/fashion-mnist", _idx_kind),
    ("chestxray14", chestxray.detect),
    ("isic2018", isic.detect),
    ("manifest", csv_manifest.detect),
    ("imagefolder", imagefolder.detect),
]


def detect_kind(root: str | Path) -> str:
    """The dataset kind at ``root``; :class:`DatasetError` naming the root and the kinds tried otherwise."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    for kind, detector in DETECTORS:
        found = detector(root)
        if found:
            resolved = found if isinstance(found, str) else kind
            logger.info("%s: detected %s", root, resolved)
            return resolved
    tried = list(dict.fromkeys(kind for kind, _ in DETECTORS))
    raise DatasetError(f"{root}: no known dataset format found; tried {tried}")


def _accepted_options(factory: Callable[..., DatasetReader]) -> list[str]:
    params = inspect.signature(factory).parameters
    fixed = factory.keywords if isinstance(factory, partial) else {}
    return [name for name, p in params.items() if p.kind is p.KEYWORD_ONLY and name not in fixed]


def open_dataset(kind: str, root: str | Path, **options: Any) -> DatasetReader:
    """Open the dataset at ``root``; ``kind`` is one of :data:`KINDS` (``auto`` detects it).

    Unknown kinds and options raise ``ValueError`` naming what is accepted; a structurally wrong dataset
    raises :class:`DatasetError` naming the file.
    """
    normalized = kind.strip().lower().replace("_", "-")
    if normalized == "auto":
        normalized = detect_kind(root)
    factory = READERS.get(normalized)
    if factory is None:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {list(KINDS)}")
    accepted = _accepted_options(factory)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset kind {normalized!r}; accepted: {accepted}")
    return factory(Path(root), **options)
