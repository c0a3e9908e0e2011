"""Relevance feedback: one query vector from several positive and negative examples (Rocchio).

Rocchio's formula (Salton, "The SMART Retrieval System", 1971) moves a query towards the centroid of the relevant
examples and away from that of the non-relevant ones: ``q = alpha * q0 + beta * mean(P) - gamma * mean(N)``. Here
the examples are the query (there is no separate ``q0``, so ``alpha = 0``), with ``beta = 1`` and ``gamma`` =
``negative_weight`` (default :data:`NEGATIVE_WEIGHT` = 0.25: a negative example says less about what is wanted than
a positive one, the usual choice of gamma < beta). Every example is L2-normalised first, so that each counts the
same, and so is the result (the indexes rank by inner product of unit vectors).
"""

from __future__ import annotations

import numpy as np

__all__ = ["NEGATIVE_WEIGHT", "FeedbackError", "rocchio"]

NEGATIVE_WEIGHT = 0.25


class FeedbackError(ValueError):
    """Examples that give no direction (no positive example, or negatives that cancel the positives exactly)."""


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rocchio(
    positives: np.ndarray, negatives: np.ndarray | None = None, negative_weight: float = NEGATIVE_WEIGHT
) -> np.ndarray:
    """``[P, D]`` positive and ``[N, D]`` negative examples -> the unit float32 query ``mean(P) - gamma mean(N)``."""
    pos = _unit_rows(positives)
    if pos.size == 0:
        raise FeedbackError("at least one positive example is needed")
    query = pos.mean(axis=0)
    if negatives is not None and len(negatives):
        query = query - negative_weight * _unit_rows(negatives).mean(axis=0)
    norm = float(np.linalg.norm(query))
    if norm < 1e-9:
        raise FeedbackError("the negative examples cancel the positive ones: no direction is left to search")
    return (query / norm).astype(np.float32)
