"""Deterministic, stratified hold-out and subset selection over a decoded split.

Order comes from a stable hash of each item id (``msir_data.base.hash_fraction``), never from a global
RNG:
the same items land in validation on every machine, run and resume, and adding images to a dataset does not
reshuffle the existing ones.
"""

from __future__ import annotations

import numpy as np

from msir_data.base import hash_fraction


def strata(labels: np.ndarray) -> np.ndarray:
    """One stratum per sample: its class (single-label), or its rarest label (multi-label; -1 for no
    label)."""
    if labels.ndim == 1:
        return labels.astype(np.int64)
    counts = labels.sum(axis=0).astype(np.float64)
    # Rarest label of each row: argmin over its positive labels of the label frequency.
    masked = np.where(labels > 0, counts[None, :], np.inf)
    rarest = masked.argmin(axis=1)
    return np.where(np.isfinite(masked.min(axis=1)), rarest, -1).astype(np.int64)


def _hash_order(item_ids: list[str], rows: np.ndarray, seed: int) -> np.ndarray:
    keys = np.array([hash_fraction(item_ids[r], seed) for r in rows], dtype=np.float64)
    return rows[np.argsort(keys, kind="stable")]


SPLIT_SEED = 0  # every split msir derives (validation, test, subsets) hashes item ids with this seed


def carve_test(labels: np.ndarray, item_ids: list[str], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(pool_rows, test_rows)`` of a dataset that has one split only: the held-out test set msir-train evaluates
    on and msir-eval reproduces (same ids and labels -> same rows)."""
    return holdout(labels, item_ids, fraction, SPLIT_SEED + 1)


def holdout(labels: np.ndarray, item_ids: list[str], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)``: ``round(fraction * n_s)`` rows of every stratum ``s`` go to validation.

    Strata of a single sample stay in training. Both arrays are sorted ascending.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    n = labels.shape[0]
    if len(item_ids) != n:
        raise ValueError(f"{len(item_ids)} item ids for {n} labels")
    if fraction == 0.0 or n == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    groups = strata(labels)
    val: list[np.ndarray] = []
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        take = round(fraction * len(rows)) if len(rows) > 1 else 0
        val.append(_hash_order(item_ids, rows, seed)[:take])
    val_rows = np.sort(np.concatenate(val)).astype(np.int64)
    train_rows = np.setdiff1d(np.arange(n, dtype=np.int64), val_rows)
    return train_rows, val_rows


def limit_rows(
    rows: np.ndarray, labels: np.ndarray, item_ids: list[str], limit: int | None, seed: int = 0
) -> np.ndarray:
    """A stratified deterministic subset of ``rows`` of size ``limit`` (all of them when ``limit`` is
    None)."""
    if limit is None or limit >= len(rows):
        return rows
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    fraction = limit / len(rows)
    _, keep = holdout(labels[rows], [item_ids[r] for r in rows], fraction, seed + 1)
    keep = rows[keep]
    if len(keep) != limit:  # per-stratum rounding: top up or trim in hash order
        ordered = _hash_order(item_ids, rows, seed + 2)
        extra = ordered[~np.isin(ordered, keep)]
        keep = np.concatenate([keep, extra])[:limit] if len(keep) < limit else _hash_order(item_ids, keep, seed)[:limit]
    return np.sort(keep)


def take(images: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``images[rows]`` read chunk by chunk (a memmap is never pulled in whole)."""
    out = np.empty((len(rows), *images.shape[1:]), dtype=images.dtype)
    for start in range(0, len(rows), chunk):
        out[start : start + chunk] = images[rows[start : start + chunk]]
    return out


__all__ = ["holdout", "limit_rows", "strata", "take"]
