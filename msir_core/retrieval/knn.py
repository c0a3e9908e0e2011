"""k-nearest-neighbour voting, shared by offline retrieval evaluation and the search service.

Single-label: every valid neighbour casts one vote for its class and the class with the most votes wins. A
tie in vote count goes to the tied class whose voters have the larger summed similarity; a tie that survives
that goes to the smallest class index, so a prediction never depends on the order of equal floats.

Multi-label: a label is predicted when at least half of the valid neighbours carry it.

A neighbour is invalid (ignored) when its score is not finite, or, single-label, when its label is negative:
FAISS pads missing neighbours with label -1, and evaluation pushes an excluded query-self to ``-inf``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from torch import Tensor

__all__ = ["KnnPrediction", "knn_predict", "vote_multi_label", "vote_single_label"]


class KnnPrediction(NamedTuple):
    """Result of :func:`knn_predict`.

    ``distribution``: float64 ``[B, C]``, the fraction of valid neighbours voting for each class
    (single-label, rows sum to 1) or carrying each label (multi-label); all zeros without a valid neighbour.
    ``predicted``: int64 ``[B]`` class index, -1 without any valid neighbour (single-label), or bool
    ``[B, C]`` label set (multi-label).
    """

    distribution: np.ndarray
    predicted: np.ndarray


def vote_single_label(
    labels: np.ndarray, scores: np.ndarray, valid: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote over ``labels [B, k]``; returns (vote fractions float64 [B, C], predicted int64 [B]).

    numpy, not torch: the service votes once per answer over at most a few hundred neighbours, where torch's
    per-operation cost was most of the vote's time; evaluation hands over its batches as arrays."""
    batch = labels.shape[0]
    cell = (np.arange(batch, dtype=np.int64)[:, None] * num_classes + np.where(valid, labels, 0)).ravel()
    size = batch * num_classes
    counts = np.bincount(cell, weights=valid.astype(np.float64).ravel(), minlength=size).reshape(batch, num_classes)
    sim_sum = np.bincount(cell, weights=np.where(valid, scores, 0.0).ravel(), minlength=size)
    best = counts.max(axis=1, keepdims=True)
    # Only classes with the top count compete on summed similarity; argmax takes the first (smallest) index.
    contenders = np.where(counts == best, sim_sum.reshape(batch, num_classes), -np.inf)
    n_valid = counts.sum(axis=1)
    predicted = np.where(n_valid > 0, contenders.argmax(axis=1), -1).astype(np.int64)
    return counts / np.maximum(n_valid, 1.0)[:, None], predicted


def vote_multi_label(labels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-label vote over multi-hot ``labels [B, k, C]``; returns (fractions float64 [B, C], bool [B, C])."""
    carried = (labels > 0) & valid[:, :, None]
    votes = carried.sum(axis=1)
    n_valid = valid.sum(axis=1, keepdims=True)
    # Integer comparison: "at least half" without rounding questions.
    predicted = (2 * votes >= n_valid) & (n_valid > 0)
    return votes / np.maximum(n_valid, 1).astype(np.float64), predicted


def _as_array(x: np.ndarray | Tensor) -> np.ndarray:
    if not isinstance(x, Tensor):
        return np.asarray(x)
    x = x.detach().cpu()
    return (x.double() if x.is_floating_point() else x).numpy()  # numpy has no bfloat16


def knn_predict(
    neighbor_labels: np.ndarray | Tensor,
    neighbor_scores: np.ndarray | Tensor,
    num_classes: int,
    *,
    multi_label: bool = False,
) -> KnnPrediction:
    """Predicted class distribution from the labels and similarity scores of the k nearest neighbours.

    ``neighbor_labels``: int ``[B, k]`` (single-label) or 0/1 ``[B, k, C]`` (multi-label);
    ``neighbor_scores``: ``[B, k]``, higher is more similar. A single query may be given without the batch
    dimension (``[k]`` / ``[k, C]``); the result then has none either. The module docstring describes ties
    and invalid neighbours.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    labels = _as_array(neighbor_labels)
    scores = _as_array(neighbor_scores)
    single_query = scores.ndim == 1
    if single_query:
        labels, scores = labels[None], scores[None]
    if scores.ndim != 2:
        raise ValueError(f"neighbor_scores must be [B, k] or [k], got shape {tuple(scores.shape)}")
    expected_ndim = 3 if multi_label else 2
    if labels.ndim != expected_ndim or tuple(labels.shape[:2]) != tuple(scores.shape):
        want = "[B, k, C] multi-hot" if multi_label else "[B, k] class indices"
        raise ValueError(
            f"neighbor_labels must be {want} matching neighbor_scores {tuple(scores.shape)}, "
            f"got shape {tuple(labels.shape)}"
        )
    scores = scores.astype(np.float64)
    valid = np.isfinite(scores)
    if multi_label:
        if labels.shape[2] != num_classes:
            raise ValueError(f"neighbor_labels has {labels.shape[2]} labels, expected num_classes={num_classes}")
        distribution, predicted = vote_multi_label(labels, valid)
    else:
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"neighbor_labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.size and int(labels.max()) >= num_classes:
            raise ValueError(f"neighbor label {int(labels.max())} is out of range for num_classes={num_classes}")
        valid &= labels >= 0
        distribution, predicted = vote_single_label(labels, scores, valid, num_classes)
    if single_query:
        return KnnPrediction(distribution[0], predicted[0])
    return KnnPrediction(distribution, predicted)
