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
import torch
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


def vote_single_label(labels: Tensor, scores: Tensor, valid: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Majority vote over ``labels [B, k]``; returns (vote fractions float64 [B, C], predicted int64 [B])."""
    safe = labels.clamp(min=0)
    weight = valid.to(torch.float64)
    counts = torch.zeros(labels.shape[0], num_classes, dtype=torch.float64, device=labels.device)
    counts.scatter_add_(1, safe, weight)
    sim_sum = torch.zeros_like(counts)
    sim_sum.scatter_add_(1, safe, torch.where(valid, scores.to(torch.float64), 0.0))
    best = counts.max(dim=1, keepdim=True).values
    # Only classes with the top count compete on summed similarity; argmax takes the first (smallest) index.
    contenders = torch.where(counts == best, sim_sum, -torch.inf)
    predicted = contenders.argmax(dim=1)
    n_valid = weight.sum(dim=1)
    predicted = torch.where(n_valid > 0, predicted, -1)
    return counts / n_valid.clamp(min=1).unsqueeze(1), predicted


def vote_multi_label(labels: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-label vote over multi-hot ``labels [B, k, C]``; returns (fractions float64 [B, C], bool [B, C])."""
    carried = (labels > 0) & valid.unsqueeze(2)
    votes = carried.sum(dim=1)
    n_valid = valid.sum(dim=1, keepdim=True)
    # Integer comparison: "at least half" without rounding questions.
    predicted = (2 * votes >= n_valid) & (n_valid > 0)
    return votes.to(torch.float64) / n_valid.clamp(min=1).to(torch.float64), predicted


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    return x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


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
    labels = _as_tensor(neighbor_labels)
    scores = _as_tensor(neighbor_scores)
    single_query = scores.ndim == 1
    if single_query:
        labels, scores = labels.unsqueeze(0), scores.unsqueeze(0)
    if scores.ndim != 2:
        raise ValueError(f"neighbor_scores must be [B, k] or [k], got shape {tuple(scores.shape)}")
    expected_ndim = 3 if multi_label else 2
    if labels.ndim != expected_ndim or tuple(labels.shape[:2]) != tuple(scores.shape):
        want = "[B, k, C] multi-hot" if multi_label else "[B, k] class indices"
        raise ValueError(
            f"neighbor_labels must be {want} matching neighbor_scores {tuple(scores.shape)}, "
            f"got shape {tuple(labels.shape)}"
        )
    scores = scores.to(torch.float64)
    valid = torch.isfinite(scores)
    if multi_label:
        if labels.shape[2] != num_classes:
            raise ValueError(f"neighbor_labels has {labels.shape[2]} labels, expected num_classes={num_classes}")
        distribution, predicted = vote_multi_label(labels, valid)
    else:
        if labels.is_floating_point():
            raise ValueError(f"neighbor_labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.to(torch.int64)
        if labels.numel() and int(labels.max()) >= num_classes:
            raise ValueError(f"neighbor label {int(labels.max())} is out of range for num_classes={num_classes}")
        valid &= labels >= 0
        distribution, predicted = vote_single_label(labels, scores, valid, num_classes)
    dist_np, pred_np = distribution.cpu().numpy(), predicted.cpu().numpy()
    if single_query:
        return KnnPrediction(dist_np[0], pred_np[0])
    return KnnPrediction(dist_np, pred_np)
