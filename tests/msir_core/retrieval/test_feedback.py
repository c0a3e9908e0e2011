"""rocchio: mean of the unit positives minus negative_weight times the mean of the unit negatives, normalised."""

from __future__ import annotations

import numpy as np
import pytest

from msir_core.retrieval.feedback import FeedbackError, rocchio


def test_formula() -> None:
    pos = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    neg = np.array([[0.0, 0.0, 5.0]])
    expected = np.array([0.5, 0.5, -0.25 * 1.0])
    np.testing.assert_allclose(rocchio(pos, neg), expected / np.linalg.norm(expected), rtol=1e-6)
    np.testing.assert_allclose(rocchio(pos), np.array([1.0, 1.0, 0.0]) / np.sqrt(2), rtol=1e-6)
    with_weight = np.array([0.5, 0.5, -1.0])
    np.testing.assert_allclose(rocchio(pos, neg, 1.0), with_weight / np.linalg.norm(with_weight), rtol=1e-6)
    assert rocchio(pos, neg).dtype == np.float32


def test_a_negative_pushes_results_away() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    pos = base + 0.1 * rng.normal(size=(3, 16))
    neg = rng.normal(size=(2, 16))
    q = rocchio(pos, neg)
    assert float(q @ (neg.mean(0) / np.linalg.norm(neg.mean(0)))) < float(
        rocchio(pos) @ (neg.mean(0) / np.linalg.norm(neg.mean(0)))
    )


def test_refusals() -> None:
    with pytest.raises(FeedbackError, match="positive"):
        rocchio(np.zeros((0, 4)))
    with pytest.raises(FeedbackError, match="cancel"):
        rocchio(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]), 1.0)
