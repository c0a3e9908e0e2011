"""Similarity heat-maps of a pair of images (Stylianou, Souvenir and Pless, "Visualizing Deep Similarity Networks",
WACV 2019), for embeddings that are a sum of per-location contributions.

If image A's embedding is ``e_A = sum_i a_i`` over the locations ``i`` of its feature map (for global average
pooling ``a_i = f_i / N``; :mod:`models.similarity_maps` derives the ``a_i`` of our models, head included), the
cosine score is

    cos(A, B) = e_A . e_B / (|e_A| |e_B|) = sum_i sum_j a_i . b_j / (|e_A| |e_B|)

The paper's matrix ``M[i, j] = a_i . b_j / (|e_A| |e_B|)`` of every location of A against every location of B,
summed over B's locations, is A's heat-map ``h_A[i] = a_i . e_B / (|e_A| |e_B|)``; summed over A's, B's. Both add up
to the cosine exactly (up to float rounding), and a location is hot when its features point where the other image's
embedding points.
"""

from __future__ import annotations

import numpy as np


def similarity_maps(parts_a: np.ndarray, parts_b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``parts_a [Na, D]``, ``parts_b [Nb, D]`` (each summing over its rows to its image's embedding) ->
    ``(cosine, heat_a [Na], heat_b [Nb])`` with ``heat_a.sum() == heat_b.sum() == cosine``. Computed in float64."""
    a = np.asarray(parts_a, np.float64)
    b = np.asarray(parts_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [Na, D] and [Nb, D] with one D, got {a.shape} and {b.shape}")
    e_a, e_b = a.sum(axis=0), b.sum(axis=0)
    norm = float(np.linalg.norm(e_a) * np.linalg.norm(e_b))
    if norm == 0.0:
        raise ValueError("an embedding is zero: its cosine is undefined")
    return float(e_a @ e_b) / norm, a @ e_b / norm, b @ e_a / norm


def pair_matrix(parts_a: np.ndarray, parts_b: np.ndarray) -> np.ndarray:
    """The paper's ``[Na, Nb]`` matrix of location-to-location similarities (its row sums are A's heat-map, its column
    sums B's)."""
    a = np.asarray(parts_a, np.float64)
    b = np.asarray(parts_b, np.float64)
    norm = float(np.linalg.norm(a.sum(axis=0)) * np.linalg.norm(b.sum(axis=0)))
    return (a @ b.T) / norm


__all__ = ["pair_matrix", "similarity_maps"]
