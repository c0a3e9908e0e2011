"""pca_2d: the two leading principal axes, deterministic signs, scaled into [-1, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from msir_core.retrieval.projection import pca_2d


def test_matches_the_covariance_eigenvectors() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 7.0
    x = x @ np.linalg.qr(rng.normal(size=(6, 6)))[0]  # rotated: the axes are not the coordinate axes
    coords, explained = pca_2d(x)
    assert coords.shape == (500, 2) and coords.dtype == np.float32
    assert np.abs(coords).max() == pytest.approx(1.0)
    values, vectors = np.linalg.eigh(np.cov(x.T))
    top = vectors[:, ::-1][:, :2]
    reference = (x - x.mean(axis=0)) @ top
    for axis in range(2):  # the same axis up to sign and the common scale
        r = np.corrcoef(coords[:, axis], reference[:, axis])[0, 1]
        assert abs(r) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(explained, values[::-1][:2] / values.sum(), rtol=1e-6)
    again, _ = pca_2d(x[::-1])
    np.testing.assert_allclose(again[::-1], coords, atol=1e-5)  # order of rows does not flip an axis


def test_degenerate_inputs() -> None:
    assert pca_2d(np.zeros((0, 4)))[0].shape == (0, 2)
    assert not pca_2d(np.ones((3, 4)))[0].any()
    line = np.outer(np.arange(5.0), [1.0, 2.0])
    coords, explained = pca_2d(line)
    assert explained[0] == pytest.approx(1.0) and np.allclose(coords[:, 1], 0, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        pca_2d(np.zeros(3))
