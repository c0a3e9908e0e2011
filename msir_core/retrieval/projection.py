"""A 2-D map of embeddings: principal component analysis (PCA) with NumPy.

The embeddings are centred and projected on their two leading principal axes (right singular vectors of the
centred matrix); each axis's sign is fixed so that its largest-magnitude loading is positive, so the same data
always draws the same map. Coordinates are then scaled into [-1, 1] (the larger axis's range), keeping the aspect
ratio.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pca_2d"]


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, D]`` vectors -> ``([N, 2]`` float32 coordinates in [-1, 1], the share of variance each axis explains)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected [N, D] vectors, got shape {list(x.shape)}")
    n = len(x)
    if n == 0:
        return np.zeros((0, 2), np.float32), np.zeros(2)
    centred = x - x.mean(axis=0)
    if n == 1 or not np.any(centred):
        return np.zeros((n, 2), np.float32), np.zeros(2)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:2]
    if len(axes) < 2:  # one-dimensional data: the second axis is flat
        axes = np.vstack([axes, np.zeros_like(axes)])
        singular = np.r_[singular, 0.0]
    signs = np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    coords = centred @ axes.T
    variance = singular**2
    explained = variance[:2] / variance.sum()
    scale = np.abs(coords).max()
    return (coords / scale if scale > 0 else coords).astype(np.float32), explained
