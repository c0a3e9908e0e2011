"""Dataset readers (CIFAR, IDX, image folders, ISIC-2018, ChestX-ray14, CSV manifests) and the decode cache.

Readers list items once, record every bad row in ``reader.skipped`` and decode lazily with ``reader.load``;
the indexer reuses them. ``msir_data.cache.cached_split`` turns a split into a uint8 memmap once.
"""

from msir_data.base import BadItemError, DatasetError, DatasetReader, Item, SkipEntry, SkipLog
from msir_data.kinds import KINDS, detect_kind, open_dataset

__all__ = [
    "KINDS",
    "BadItemError",
    "DatasetError",
    "DatasetReader",
    "Item",
    "SkipEntry",
    "SkipLog",
    "detect_kind",
    "open_dataset",
]
