"""The heat-map identity: row and column sums of the location matrix are the two maps; both sum to the cosine."""

from __future__ import annotations

import numpy as np
import pytest

from msir_core.retrieval.heatmaps import pair_matrix, similarity_maps


def test_maps_are_the_matrix_sums_and_add_up_to_the_cosine() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(9, 5))
    score, heat_a, heat_b = similarity_maps(a, b)
    e_a, e_b = a.sum(0), b.sum(0)
    assert score == pytest.approx(e_a @ e_b / np.linalg.norm(e_a) / np.linalg.norm(e_b))
    matrix = pair_matrix(a, b)
    np.testing.assert_allclose(matrix.sum(axis=1), heat_a)
    np.testing.assert_allclose(matrix.sum(axis=0), heat_b)
    assert heat_a.sum() == pytest.approx(score) and heat_b.sum() == pytest.approx(score)


def test_shapes_and_zero_embeddings_are_refused() -> None:
    with pytest.raises(ValueError, match="one D"):
        similarity_maps(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="zero"):
        similarity_maps(np.array([[1.0, 0.0], [-1.0, 0.0]]), np.ones((1, 2)))
