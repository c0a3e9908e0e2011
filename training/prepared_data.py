"""What a run trains and evaluates on: decoded uint8 arrays of the train, validation and test splits.

:func:`prepare_data` goes through the dataset readers and the decode cache (``msir_data``);
:func:`from_arrays`
builds the same thing from in-memory arrays (tests, notebooks). The validation split is an explicit split or a
stratified hold-out of the train split chosen by item-id hash (independent of the run's seed, so runs with
different seeds are compared on the same images).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models import PreprocessSpec
from msir_data import open_dataset
from msir_data.cache import cached_split
from training.config import RunConfig
from training.splits import SPLIT_SEED, carve_test, holdout, limit_rows, take

logger = logging.getLogger(__name__)


@dataclass
class EvalSplit:
    images: np.ndarray  # uint8 [N, C, H, W], in RAM
    labels: np.ndarray  # int64 [N] or uint8 [N, C]
    item_ids: list[str]

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass
class PreparedData:
    class_names: list[str]
    multi_label: bool
    spec: PreprocessSpec
    images: np.ndarray  # the whole decoded train split (memmap allowed); train_rows select the training images
    labels: np.ndarray
    item_ids: list[str]
    train_rows: np.ndarray
    val: EvalSplit | None
    test: EvalSplit | None
    summary: dict[str, Any] = field(default_factory=dict)
    class_descriptions: dict[str, str] = field(default_factory=dict)  # the reader's full class names

    def fingerprint(self) -> str:
        """Identity of the training set (a resumed run must see the same images in the same rows)."""
        h = hashlib.sha256()
        for r in self.train_rows.tolist():
            h.update(self.item_ids[r].encode() + b"\n")
        return h.hexdigest()[:16]


def _split_holdout(
    images: np.ndarray,
    labels: np.ndarray,
    item_ids: list[str],
    val_fraction: float,
    limit: int | None,
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, EvalSplit | None]:
    train_rows, val_rows = holdout(labels, item_ids, val_fraction, seed)
    train_rows = limit_rows(train_rows, labels, item_ids, limit, seed)
    val = None
    if len(val_rows):
        val = EvalSplit(take(images, val_rows), labels[val_rows], [item_ids[r] for r in val_rows])
    return train_rows, val


def _split_single(
    images: np.ndarray,
    labels: np.ndarray,
    item_ids: list[str],
    val_fraction: float,
    test_fraction: float,
    limit: int | None,
) -> tuple[np.ndarray, EvalSplit | None, EvalSplit | None]:
    """Train rows, validation and test sets carved out of a dataset's only split (stratified, deterministic)."""
    pool, test_rows = carve_test(labels, item_ids, test_fraction)
    sub_train, sub_val = holdout(labels[pool], [item_ids[r] for r in pool], val_fraction, SPLIT_SEED)
    train_rows = limit_rows(pool[sub_train], labels, item_ids, limit, SPLIT_SEED)

    def part(rows: np.ndarray) -> EvalSplit | None:
        return EvalSplit(take(images, rows), labels[rows], [item_ids[r] for r in rows]) if len(rows) else None

    return train_rows, part(pool[sub_val]), part(test_rows)


def from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    spec: PreprocessSpec,
    *,
    multi_label: bool = False,
    item_ids: list[str] | None = None,
    val_fraction: float = 0.0,
    limit_train: int | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> PreparedData:
    """Prepared data from in-memory arrays (uint8 ``[N, C, H, W]`` + int64 ``[N]`` or multi-hot ``[N,
    C]``)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {images.shape}")
    ids = item_ids or [f"#{i}" for i in range(len(images))]
    train_rows, val = _split_holdout(images, labels, ids, val_fraction, limit_train)
    test_split = None
    if test is not None:
        test_split = EvalSplit(test[0], test[1], [f"test#{i}" for i in range(len(test[0]))])
    summary = {
        "kind": "arrays",
        "train": len(train_rows),
        "val": len(val or []),
        "test": len(test_split or []),
    }
    return PreparedData(list(class_names), multi_label, spec, images, labels, ids, train_rows, val, test_split, summary)


def prepare_data(cfg: RunConfig, *, progress: bool = True) -> PreparedData:
    """Open the dataset of ``cfg.data``, decode (or memory-map the cached) splits and pick the rows."""
    d = cfg.data
    if d.root is None:
        raise ValueError("data.root is not set: give --data-root PATH or set data.root in the config")
    spec = d.preprocess_spec()
    reader = open_dataset(d.kind, d.root, **d.options)
    splits = reader.splits()
    single = d.train_split not in splits and len(splits) == 1 and d.val_split is None
    if d.train_split not in splits and not single:
        raise ValueError(f"{d.root}: no train split {d.train_split!r}; the dataset has {splits}")
    train = cached_split(reader, splits[0] if single else d.train_split, spec, d.cache_dir, progress=progress)
    test = None
    if single:
        train_rows, val, test = _split_single(
            train.images, train.labels, train.item_ids, d.val_fraction, d.test_fraction, d.limit_train
        )
        logger.info(
            "%s: one split %r only: held out %d images for test (%g) and %d for validation (%g of the rest)",
            d.root,
            splits[0],
            len(test or []),
            d.test_fraction,
            len(val or []),
            d.val_fraction,
        )
    elif d.val_split is not None:
        if d.val_split not in splits:
            raise ValueError(f"{d.root}: no validation split {d.val_split!r}; the dataset has {splits}")
        v = cached_split(reader, d.val_split, spec, d.cache_dir, progress=progress)
        train_rows = limit_rows(
            np.arange(len(train), dtype=np.int64), train.labels, train.item_ids, d.limit_train, SPLIT_SEED
        )
        val: EvalSplit | None = EvalSplit(np.asarray(v.images), v.labels, v.item_ids)
    else:
        train_rows, val = _split_holdout(train.images, train.labels, train.item_ids, d.val_fraction, d.limit_train)
    if d.test_split is not None and not single:
        if d.test_split in splits:
            t = cached_split(reader, d.test_split, spec, d.cache_dir, progress=progress)
            test = EvalSplit(np.asarray(t.images), t.labels, t.item_ids)
        else:
            logger.warning("%s: no test split %r (splits: %s); no test evaluation", d.root, d.test_split, splits)
    summary = {
        "kind": reader.name,
        "root": str(d.root),
        "splits": {s: reader.count(s) for s in splits},
        "classes": len(reader.class_names),
        "multi_label": reader.multi_label,
        "train": len(train_rows),
        "val": len(val) if val is not None else 0,
        "val_source": d.val_split or f"{d.val_fraction:g} of {splits[0] if single else d.train_split} (stratified)",
        "test_source": f"{d.test_fraction:g} of {splits[0]} (stratified)" if single else d.test_split,
        "test": len(test) if test is not None else 0,
        "skipped": len(reader.skipped),
        "skipped_by_reason": reader.skipped.summary(),
        "cache": str(train.path),
    }
    if len(reader.skipped):
        logger.warning("%s: %s", d.root, reader.skipped.describe())
    return PreparedData(
        reader.class_names,
        reader.multi_label,
        spec,
        train.images,
        train.labels,
        train.item_ids,
        train_rows,
        val,
        test,
        summary,
        dict(reader.class_descriptions),
    )


__all__ = ["EvalSplit", "PreparedData", "from_arrays", "prepare_data"]
