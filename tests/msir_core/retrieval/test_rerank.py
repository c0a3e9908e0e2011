"""Re-ranking against reference computations written independently of the vectorised code.

The k-reciprocal reference is a loop-by-loop transcription of the published re-ranking code (Zhong et al.,
CVPR 2017, as distributed with the paper and copied by the re-identification libraries): argsort, the k-reciprocal
sets, the 2/3 expansion, Gaussian weights, local query expansion and the inverted-index Jaccard distance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msir_core.retrieval.rerank import (
    RerankConfig,
    RerankError,
    augment_database,
    exact_neighbours,
    expand_queries,
    k_reciprocal_scores,
    rerank_shortlist,
)
from training.evaluation import retrieval_metrics


def reference_re_ranking(
    q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int, k2: int, lambda_value: float
) -> np.ndarray:
    """The published algorithm on distance matrices, with its loops (float64)."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0
    )
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    v = np.zeros_like(original_dist)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = original_dist.shape[0]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for candidate in k_reciprocal_index:
            candidate_forward_k_neigh_index = initial_rank[candidate, : int(np.around(k1 / 2.0)) + 1]
            candidate_backward_k_neigh_index = initial_rank[
                candidate_forward_k_neigh_index, : int(np.around(k1 / 2.0)) + 1
            ]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                candidate_k_reciprocal_index
            ):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        v[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(all_num):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
    inv_index = [np.where(v[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num])
        ind_non_zero = np.where(v[i, :] != 0)[0]
        ind_images = [inv_index[ind] for ind in ind_non_zero]
        for j in range(len(ind_non_zero)):
            temp_min[0, ind_images[j]] += np.minimum(v[i, ind_non_zero[j]], v[ind_images[j], ind_non_zero[j]])
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def clustered(n_per: int, classes: int, d: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    labels = torch.arange(classes).repeat_interleave(n_per)
    return F.normalize(centres[labels] + noise * torch.randn(len(labels), d, generator=g), dim=1), labels


@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (5, 3, 0.5), (7, 1, 0.0)])
def test_k_reciprocal_matches_the_published_algorithm(k1: int, k2: int, lam: float) -> None:
    queries, _ = clustered(1, 3, 16, 0.9, seed=1)  # 3 queries
    shortlists = torch.stack([unit(40, 16, seed=10 + i) * 0.5 + queries[i] for i in range(3)])
    shortlists = F.normalize(shortlists, dim=2)
    ours = k_reciprocal_scores(queries, shortlists, k1, k2, lam)
    for i in range(3):
        q = queries[i : i + 1].double().numpy()
        g = shortlists[i].double().numpy()
        sq = lambda a, b: np.clip(2 - 2 * a @ b.T, 0, None)  # noqa: E731 - squared distance of unit vectors
        ref = reference_re_ranking(sq(q, g), sq(q, q), sq(g, g), k1, k2, lam)[0]
        np.testing.assert_allclose(-ours[i].double().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_alpha_query_expansion_and_dba_follow_the_formula() -> None:
    db = unit(50, 8, seed=2)
    q = unit(4, 8, seed=3)
    cfg = RerankConfig(method="aqe", qe_neighbours=5, alpha=3.0)
    got = expand_queries(q, exact_neighbours(db, batch_size=3), cfg)
    for i in range(4):
        sims = db @ q[i]
        top = torch.argsort(sims, descending=True)[:5]
        want = q[i] + sum(max(float(sims[j]), 0.0) ** 3 * db[j] for j in top)
        torch.testing.assert_close(got[i], F.normalize(want, dim=0), rtol=1e-5, atol=1e-6)
    aug = augment_database(db, exact_neighbours(db), RerankConfig(method="dba", qe_neighbours=4, alpha=3.0))
    for i in range(50):
        sims = db @ db[i]
        top = torch.argsort(sims, descending=True)[:5]  # itself first
        assert int(top[0]) == i
        want = sum(max(float(sims[j]), 0.0) ** 3 * db[j] for j in top)
        torch.testing.assert_close(aug[i], F.normalize(want, dim=0), rtol=1e-5, atol=1e-6)


def test_rerank_shortlist_orders_and_keeps_padding_last() -> None:
    db = unit(30, 8, seed=4)
    q = unit(2, 8, seed=5)
    scores, idx = torch.topk(q @ db.T, 10, dim=1)
    scores[1, -2:] = -torch.inf  # two padded slots (fewer results than asked)
    for method in ("dba", "kreciprocal"):
        cfg = RerankConfig(method=method, k1=4, k2=2, qe_neighbours=3)
        order, new = rerank_shortlist(q, scores, db[idx], cfg, exact_neighbours(db))
        assert sorted(order[0].tolist()) == list(range(10))
        assert set(order[1, -2:].tolist()) == {8, 9} and torch.isinf(new[1, -2:]).all()
        assert (new[:, :-1] >= new[:, 1:]).all()
    with pytest.raises(RerankError, match="DBA needs"):
        rerank_shortlist(q, scores, db[idx], RerankConfig(method="dba"))


def test_retrieval_metrics_with_rerank() -> None:
    db, dl = clustered(40, 5, 16, 1.3, seed=6)
    q, ql = clustered(8, 5, 16, 1.3, seed=7)
    plain = retrieval_metrics(q, ql, db, dl, ks=(1, 10))
    assert "rerank" not in plain
    for method in ("aqe", "dba", "kreciprocal"):
        cfg = RerankConfig(method=method, shortlist=50, k1=10, k2=3)
        got = retrieval_metrics(q, ql, db, dl, ks=(1, 10), rerank=cfg, batch_size=7)
        assert got["rerank"]["method"] == method
        assert 0.0 < got["map_at_all"] <= 1.0
        # Same answer for any batch size: the re-ranking is per query.
        again = retrieval_metrics(q, ql, db, dl, ks=(1, 10), rerank=cfg, batch_size=40)
        assert again["map_at_all"] == pytest.approx(got["map_at_all"], abs=1e-9)
    # On well-separated clusters every method finds the class structure at least as well as plain cosine.
    assert retrieval_metrics(q, ql, db, dl, rerank=RerankConfig(method="aqe"))["map_at_all"] >= plain["map_at_all"]
    # The shortlist is re-ordered in place: its items stay ahead, so mAP changes only through their order.
    none = retrieval_metrics(q, ql, db, dl, rerank=RerankConfig(method="none"))
    assert none["map_at_all"] == plain["map_at_all"]


def test_aqe_in_metrics_equals_searching_with_the_expanded_queries() -> None:
    db, dl = clustered(30, 4, 12, 1.5, seed=8)
    q, ql = clustered(6, 4, 12, 1.5, seed=9)
    cfg = RerankConfig(method="aqe", qe_neighbours=4, alpha=3.0)
    got = retrieval_metrics(q, ql, db, dl, ks=(1, 5), rerank=cfg)
    want = retrieval_metrics(expand_queries(q, exact_neighbours(db), cfg), ql, db, dl, ks=(1, 5))
    assert got["map_at_all"] == pytest.approx(want["map_at_all"], abs=1e-9)
    assert got["precision_at_k"] == want["precision_at_k"]


def test_shortlist_rerank_in_metrics_equals_the_shortlist_order() -> None:
    db, dl = clustered(30, 4, 12, 1.5, seed=10)
    q, ql = clustered(3, 4, 12, 1.5, seed=11)
    cfg = RerankConfig(method="kreciprocal", shortlist=20, k1=6, k2=3)
    got = retrieval_metrics(q, ql, db, dl, ks=(1, 20), rerank=cfg)
    scores, idx = torch.topk(q @ db.T, 20, dim=1)
    order, _ = rerank_shortlist(q, scores, db[idx], cfg)
    ranked = [int(idx[i][order[i]][0]) for i in range(len(q))]
    p1 = float(np.mean([int(dl[r] == ql[i]) for i, r in enumerate(ranked)]))
    assert got["precision_at_k"]["1"] == pytest.approx(p1)
    p20 = float(np.mean([int((dl[idx[i]] == ql[i]).sum()) / 20 for i in range(len(q))]))
    assert got["precision_at_k"]["20"] == pytest.approx(p20)  # the shortlist's members do not change


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "bogus"}, "rerank must be one of"),
        ({"method": "aqe", "qe_neighbours": 0}, "qe_neighbours"),
        ({"method": "kreciprocal", "lambda_value": 2.0}, "lambda_value"),
        ({"method": "dba", "alpha": -1.0}, "alpha"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(RerankError, match=match):
        RerankConfig(**kwargs)
