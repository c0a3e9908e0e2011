"""knn_predict: the vote the service reuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.evaluation import knn_predict


def test_majority_vote_and_distribution() -> None:
    out = knn_predict(np.array([[2, 2, 1, 0], [1, 0, 1, 1]]), np.array([[0.9, 0.8, 0.7, 0.6]] * 2), 3)
    assert out.predicted.tolist() == [2, 1]
    np.testing.assert_allclose(out.distribution, [[0.25, 0.25, 0.5], [0.25, 0.75, 0.0]])


def test_count_tie_goes_to_larger_summed_similarity_then_smaller_class() -> None:
    # Classes 0 and 1 have two votes each; class 1's voters are more similar in total (1.3 > 1.2).
    out = knn_predict([[0, 1, 0, 1]], [[0.9, 0.7, 0.3, 0.6]], 2)
    assert out.predicted.tolist() == [1]
    # Identical summed similarity as well: the smaller class index wins, whatever the order.
    for labels in ([[2, 1, 1, 2]], [[1, 2, 2, 1]]):
        assert knn_predict(labels, [[0.5, 0.5, 0.5, 0.5]], 3).predicted.tolist() == [1]


def test_padding_and_non_finite_neighbours_are_ignored() -> None:
    out = knn_predict([[1, -1, 0], [-1, -1, -1]], [[0.9, 0.99, -np.inf], [0.5, 0.4, 0.3]], 2)
    assert out.predicted.tolist() == [1, -1]
    np.testing.assert_allclose(out.distribution, [[0.0, 1.0], [0.0, 0.0]])


def test_single_query_without_batch_dimension_and_torch_input() -> None:
    out = knn_predict(torch.tensor([3, 3, 0]), torch.tensor([0.2, 0.1, 0.9]), 4)
    assert out.predicted == 3
    assert out.distribution.shape == (4,)


def test_multi_label_at_least_half() -> None:
    labels = np.array([[[1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0]]])
    out = knn_predict(labels, np.ones((1, 4)), 3, multi_label=True)
    np.testing.assert_allclose(out.distribution, [[0.5, 0.25, 0.5]])
    assert out.predicted.tolist() == [[True, False, True]]
    # Three valid neighbours once the last is padding: 2 of 3 is enough, 1 of 3 is not.
    out = knn_predict(labels, np.array([[1.0, 1.0, 1.0, np.nan]]), 3, multi_label=True)
    assert out.predicted.tolist() == [[True, False, True]]
    np.testing.assert_allclose(out.distribution, [[2 / 3, 1 / 3, 2 / 3]])


def test_invalid_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="out of range"):
        knn_predict([[0, 5]], [[1.0, 1.0]], 3)
    with pytest.raises(ValueError, match="matching"):
        knn_predict([[0, 1, 2]], [[1.0, 1.0]], 3)
    with pytest.raises(ValueError, match="integer"):
        knn_predict([[0.0, 1.0]], [[1.0, 1.0]], 3)
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(np.zeros((1, 2, 4)), np.ones((1, 2)), 3, multi_label=True)
