"""rank_rows: the packed-key CPU sort must order exactly like a stable descending sort."""

from __future__ import annotations

import numpy as np
import torch

from msir_core.retrieval.ranking import RankWorkspace, rank_rows


def _awkward_scores(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random scores salted with ties, signed zeros, -inf, tiny and denormal values."""
    s = rng.uniform(-1, 1, (rows, cols)).astype(np.float32)
    s[:, ::7] = np.round(s[:, ::7], 1)  # many exact ties
    s[:, 3] = -0.0
    s[:, 4] = 0.0
    s[:, 5] = -np.inf
    s[:, 6] = np.float32(1e-40)  # denormal
    s[:, 8] = -np.float32(1e-40)
    s[:, 9] = np.finfo(np.float32).tiny
    return s


def test_cpu_keys_match_stable_torch_sort() -> None:
    rng = np.random.default_rng(0)
    scores = _awkward_scores(rng, 37, 500)
    expected_scores, expected_order = torch.sort(torch.from_numpy(scores), dim=1, descending=True, stable=True)
    order, top = rank_rows(torch.from_numpy(scores.copy()), 20)
    assert torch.equal(order, expected_order)
    # -0.0 and 0.0 tie, so column 3 comes before column 4 in every row.
    assert (np.argwhere(order.numpy() == 3)[:, 1] < np.argwhere(order.numpy() == 4)[:, 1]).all()
    np.testing.assert_array_equal(top.numpy(), expected_scores[:, :20].numpy())
    assert (order.numpy()[:, -1] == 5).all()  # -inf last


def test_workspace_is_reused_across_batches_of_different_sizes() -> None:
    rng = np.random.default_rng(1)
    scores = _awkward_scores(rng, 10, 64)
    ws = RankWorkspace(6, 64)
    fresh = [rank_rows(torch.from_numpy(scores[i : i + 1].copy()), 5)[0] for i in range(10)]
    for start in (0, 6):
        order, _ = rank_rows(torch.from_numpy(scores[start : start + 6].copy()), 5, ws)
        for i, row in enumerate(order):
            assert torch.equal(row, fresh[start + i][0])
