"""retrieval_metrics: cross-checked against scikit-learn, a brute-force reference and hand-computed toys."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from training.evaluation import retrieval_metrics


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _angles(*degrees: float) -> np.ndarray:
    """2-D unit vectors; against the query [1, 0] the similarity falls as the angle grows."""
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def _clustered(rng: np.random.Generator, n: int, num_classes: int, dim: int, spread: float = 1.5):
    centres = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


def _reference(q, ql, d, dl, ks, multi_label=False, self_cols=None):
    """Plain loop over queries: stable argsort by descending float64 similarity."""
    sims = _unit(q.astype(np.float64)) @ _unit(d.astype(np.float64)).T
    rows = []
    for i in range(len(q)):
        keep = np.ones(len(d), dtype=bool)
        if self_cols is not None and self_cols[i] >= 0:
            keep[self_cols[i]] = False
        s = sims[i, keep]
        rel = ((dl[keep] & ql[i]).any(axis=1)) if multi_label else (dl[keep] == ql[i])
        order = np.argsort(-s, kind="stable")
        r = rel[order]
        n_rel = int(r.sum())
        row = {"n_rel": n_rel, "p": [r[:k].sum() / k for k in ks], "sims": s, "rel": rel, "order": order}
        if n_rel:
            prec = np.cumsum(r) / np.arange(1, len(r) + 1)
            row["ap"] = prec[r].mean()
            row["ap_r"] = (prec[:n_rel] * r[:n_rel]).sum() / n_rel
            row["r"] = [r[:k].sum() / n_rel for k in ks]
            row["hit"] = [float(r[:k].any()) for k in ks]
        rows.append(row)
    return rows


def _mean_of(rows, key, j=None):
    vals = [r[key] if j is None else r[key][j] for r in rows if key in r]
    return float(np.mean(vals))


def test_map_at_all_matches_sklearn_per_query_without_ties() -> None:
    rng = np.random.default_rng(0)
    q, ql = _clustered(rng, 25, 4, 16)
    d, dl = _clustered(rng, 300, 4, 16)
    sims = _unit(q) @ _unit(d).T
    assert all(len(np.unique(row)) == len(row) for row in sims), "the sklearn cross-check needs no score ties"
    for i in range(len(q)):
        # One query at a time: map_at_all is then exactly that query's AP.
        got = retrieval_metrics(q[i : i + 1], ql[i : i + 1], d, dl)["map_at_all"]
        expected = average_precision_score(dl == ql[i], sims[i])
        assert got == pytest.approx(expected, abs=1e-6)


def test_all_metrics_match_reference_and_sklearn() -> None:
    rng = np.random.default_rng(1)
    ks = (1, 3, 10, 50)
    q, ql = _clustered(rng, 60, 5, 12)
    d, dl = _clustered(rng, 400, 5, 12)
    m = retrieval_metrics(q, ql, d, dl, ks=ks)
    ref = _reference(q, ql, d, dl, ks)
    for j, k in enumerate(ks):
        assert m["precision_at_k"][str(k)] == pytest.approx(_mean_of(ref, "p", j), abs=1e-9)
        assert m["recall_at_k"][str(k)] == pytest.approx(_mean_of(ref, "r", j), abs=1e-9)
        assert m["hit_rate_at_k"][str(k)] == pytest.approx(_mean_of(ref, "hit", j), abs=1e-9)
    assert m["map_at_r"] == pytest.approx(_mean_of(ref, "ap_r"), abs=1e-9)
    sk_ap = [average_precision_score(r["rel"], r["sims"]) for r in ref]
    assert m["map_at_all"] == pytest.approx(float(np.mean(sk_ap)), abs=1e-6)
    # Per class: the mean over the queries of each class.
    for c in range(5):
        members = [r for r, label in zip(ref, ql, strict=True) if label == c]
        assert m["per_class"]["num_queries"][c] == len(members)
        assert m["per_class"]["ap"][c] == pytest.approx(_mean_of(members, "ap"), abs=1e-9)
        assert m["per_class"]["ap_at_r"][c] == pytest.approx(_mean_of(members, "ap_r"), abs=1e-9)
        for j, k in enumerate(ks):
            assert m["per_class"]["precision_at_k"][str(k)][c] == pytest.approx(_mean_of(members, "p", j))
            assert m["per_class"]["recall_at_k"][str(k)][c] == pytest.approx(_mean_of(members, "r", j))
    json.dumps(m, allow_nan=False)


def test_hand_computed_ranking() -> None:
    # Ranks 1..6 by falling similarity; relevant (label 0) at ranks 1, 3 and 6.
    d = _angles(0, 10, 20, 30, 40, 50)
    dl = np.array([0, 1, 0, 1, 1, 0])
    m = retrieval_metrics(_angles(0), np.array([0]), d, dl, ks=(1, 2, 5, 10))
    assert m["precision_at_k"] == pytest.approx({"1": 1.0, "2": 0.5, "5": 0.4, "10": 0.3})
    assert m["recall_at_k"] == pytest.approx({"1": 1 / 3, "2": 1 / 3, "5": 2 / 3, "10": 1.0})
    assert m["hit_rate_at_k"] == pytest.approx({"1": 1.0, "2": 1.0, "5": 1.0, "10": 1.0})
    assert m["map_at_all"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert m["map_at_r"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    # kNN: top-1 is class 0; top-2 is a 1-1 tie won by the more similar class 0; top-5 has three votes for
    # class 1; all six is a 3-3 tie that class 1 wins on summed similarity (2.617 against 2.583).
    assert m["knn_accuracy"] == {"1": 1.0, "2": 1.0, "5": 0.0, "10": 0.0}


def test_tied_scores_rank_by_database_index() -> None:
    # Two pairs of identical database vectors: equal scores, ranked by ascending index.
    d = _angles(10, 10, 40, 40)
    m = retrieval_metrics(_angles(0), [0], d, [1, 0, 0, 1], ks=(1, 2))
    assert m["map_at_all"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["map_at_r"] == pytest.approx((1 / 2) / 2)
    assert m["precision_at_k"] == pytest.approx({"1": 0.0, "2": 0.5})
    swapped = retrieval_metrics(_angles(0), [0], d, [0, 1, 1, 0], ks=(1, 2))
    assert swapped["map_at_all"] == pytest.approx((1 / 1 + 2 / 4) / 2)
    # scikit-learn treats each tied pair as one step instead, so it sees both orders the same.
    sims = _angles(0) @ d.T
    assert average_precision_score([0, 1, 1, 0], sims[0]) == pytest.approx(0.5)


def test_query_without_relevant_item_is_counted_and_excluded() -> None:
    rng = np.random.default_rng(2)
    q, ql = _clustered(rng, 20, 3, 8)
    d, dl = _clustered(rng, 100, 3, 8)
    ql_extra = np.append(ql, 7)  # no database item has class 7
    q_extra = np.vstack([q, rng.normal(size=(1, 8)).astype(np.float32)])
    base = retrieval_metrics(q, ql, d, dl, ks=(1, 5))
    m = retrieval_metrics(q_extra, ql_extra, d, dl, ks=(1, 5))
    assert base["queries_without_relevant"] == 0
    assert m["queries_without_relevant"] == 1
    assert m["queries_with_relevant"] == 20
    for key in ("map_at_all", "map_at_r"):
        assert m[key] == pytest.approx(base[key])
    assert m["recall_at_k"] == pytest.approx(base["recall_at_k"])
    assert m["hit_rate_at_k"] == pytest.approx(base["hit_rate_at_k"])
    # P@K keeps the query (it scores 0), so the mean is diluted by one query.
    assert m["precision_at_k"]["5"] == pytest.approx(base["precision_at_k"]["5"] * 20 / 21)
    assert m["per_class"]["ap"][7] is None
    assert m["per_class"]["precision_at_k"]["1"][7] == 0.0
    assert m["per_class"]["num_queries"][7] == 1
    assert "excluded" in m["note"]


def test_multi_label_relevance_hand_computed() -> None:
    # Query carries labels {0, 1}; database: {0}, {2}, {1, 2}, {} at falling similarity.
    d = _angles(0, 10, 20, 30)
    dl = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 1], [0, 0, 0]])
    m = retrieval_metrics(_angles(0), np.array([[1, 1, 0]]), d, dl, ks=(1, 2, 3), multi_label=True)
    assert m["precision_at_k"] == pytest.approx({"1": 1.0, "2": 0.5, "3": 2 / 3})
    assert m["recall_at_k"] == pytest.approx({"1": 0.5, "2": 0.5, "3": 1.0})
    assert m["map_at_all"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["map_at_r"] == pytest.approx(1 / 2)
    # kNN, label carried by at least half: top-1 {0}; top-2 {0, 2}; top-3 {2}.
    assert m["knn_subset_accuracy"] == {"1": 0.0, "2": 0.0, "3": 0.0}
    assert m["knn_sample_f1"] == pytest.approx({"1": 2 / 3, "2": 0.5, "3": 0.0})
    assert m["per_class"]["num_queries"] == [1, 1, 0]
    assert m["per_class"]["ap"][2] is None


def test_multi_label_random_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    q = rng.normal(size=(30, 10))
    d = rng.normal(size=(200, 10))
    ql = (rng.random((30, 6)) < 0.2).astype(np.uint8)
    dl = (rng.random((200, 6)) < 0.2).astype(np.uint8)
    ks = (1, 5, 15)
    m = retrieval_metrics(q, ql, d, dl, ks=ks, multi_label=True)
    ref = _reference(q, ql.astype(bool), d, dl.astype(bool), ks, multi_label=True)
    assert m["queries_without_relevant"] == sum(r["n_rel"] == 0 for r in ref)
    sk_ap = [average_precision_score(r["rel"], r["sims"]) for r in ref if r["n_rel"]]
    assert m["map_at_all"] == pytest.approx(float(np.mean(sk_ap)), abs=1e-6)
    assert m["map_at_r"] == pytest.approx(_mean_of(ref, "ap_r"), abs=1e-9)
    for j, k in enumerate(ks):
        assert m["precision_at_k"][str(k)] == pytest.approx(_mean_of(ref, "p", j))
        assert m["recall_at_k"][str(k)] == pytest.approx(_mean_of(ref, "r", j))
        # kNN label sets against scikit-learn's sample F1 (empty predicted for empty truth scores 1).
        predicted = np.array([2 * dl[r["order"][:k]].sum(axis=0) >= k for r in ref]).astype(int)
        expected = f1_score(ql, predicted, average="samples", zero_division=1.0)
        assert m["knn_sample_f1"][str(k)] == pytest.approx(expected)


def test_knn_accuracy_matches_reference_vote() -> None:
    rng = np.random.default_rng(4)
    q, ql = _clustered(rng, 40, 4, 6, spread=3.0)
    d, dl = _clustered(rng, 150, 4, 6, spread=3.0)
    ks = (1, 2, 4, 7)
    m = retrieval_metrics(q, ql, d, dl, ks=ks)
    ref = _reference(q, ql, d, dl, ks)
    for k in ks:
        correct = []
        for r, label in zip(ref, ql, strict=True):
            top = r["order"][:k]
            votes = Counter(dl[top].tolist())
            best = max(votes.values())
            tied = [c for c, v in votes.items() if v == best]
            weight = {c: r["sims"][top][dl[top] == c].sum() for c in tied}
            winner = sorted(tied, key=lambda c: (-weight[c], c))[0]
            correct.append(winner == label)
        assert m["knn_accuracy"][str(k)] == pytest.approx(float(np.mean(correct)))


def test_exclude_self_by_id_and_same_array() -> None:
    rng = np.random.default_rng(5)
    emb, labels = _clustered(rng, 80, 3, 8)
    ids = [f"img{i}.png" for i in range(80)]
    ks = (1, 5)
    same = retrieval_metrics(emb, labels, emb, labels, ks=ks)
    assert same["self_excluded"] == "same array"
    by_id = retrieval_metrics(emb, labels, emb.copy(), labels, ks=ks, exclude_self=True, query_ids=ids, db_ids=ids)
    assert by_id["self_excluded"] == "by id"
    ref = _reference(emb, labels, emb, labels, ks, self_cols=np.arange(80))
    for got in (same, by_id):
        assert got["map_at_all"] == pytest.approx(_mean_of(ref, "ap"))
        assert got["precision_at_k"]["1"] == pytest.approx(_mean_of(ref, "p", 0))
        assert got["recall_at_k"]["5"] == pytest.approx(_mean_of(ref, "r", 1))
    included = retrieval_metrics(emb, labels, emb.copy(), labels, ks=ks)
    assert included["self_excluded"] is None
    assert included["precision_at_k"]["1"] == 1.0  # each query finds itself first when not excluded

    # Queries that are a subset of the database, with ids in another order.
    sub = [3, 17, 42]
    part = retrieval_metrics(
        emb[sub],
        labels[sub],
        emb,
        labels,
        ks=ks,
        exclude_self=True,
        query_ids=[ids[i] for i in sub],
        db_ids=ids,
    )
    sub_ref = _reference(emb[sub], labels[sub], emb, labels, ks, self_cols=np.array(sub))
    assert part["map_at_all"] == pytest.approx(_mean_of(sub_ref, "ap"))


def test_exclude_self_requires_ids_or_same_array() -> None:
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="query_ids and db_ids"):
        retrieval_metrics(emb, [0, 1, 1], emb.copy(), [0, 1, 1], exclude_self=True)
    with pytest.raises(ValueError, match="unique"):
        retrieval_metrics(
            emb,
            [0, 1, 1],
            emb,
            [0, 1, 1],
            exclude_self=True,
            query_ids=["a", "b", "c"],
            db_ids=["a", "b", "a"],
        )


@pytest.mark.parametrize("multi_label", [False, True])
def test_batch_size_does_not_change_anything(multi_label: bool) -> None:
    rng = np.random.default_rng(6)
    q = rng.normal(size=(53, 16)).astype(np.float32)
    d = rng.normal(size=(301, 16)).astype(np.float32)
    if multi_label:
        ql, dl = (rng.random((53, 5)) < 0.3).astype(int), (rng.random((301, 5)) < 0.3).astype(int)
    else:
        ql, dl = rng.integers(0, 6, 53), rng.integers(0, 6, 301)
    small = retrieval_metrics(q, ql, d, dl, multi_label=multi_label, batch_size=7)
    large = retrieval_metrics(q, ql, d, dl, multi_label=multi_label, batch_size=1024)
    assert small == large


def test_torch_inputs_and_class_names() -> None:
    rng = np.random.default_rng(7)
    q, ql = _clustered(rng, 10, 3, 4)
    d, dl = _clustered(rng, 30, 3, 4)
    from_numpy = retrieval_metrics(q, ql, d, dl, class_names=["cat", "dog", "eel", "fox"])
    from_torch = retrieval_metrics(
        torch.from_numpy(q),
        torch.from_numpy(ql),
        torch.from_numpy(d),
        dl,
        class_names=["cat", "dog", "eel", "fox"],
    )
    assert from_numpy == from_torch
    assert from_numpy["per_class"]["class_names"] == ["cat", "dog", "eel", "fox"]
    assert from_numpy["per_class"]["num_queries"][3] == 0
    assert from_numpy["per_class"]["ap"][3] is None


def test_invalid_inputs_are_named() -> None:
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="dimension"):
        retrieval_metrics(emb, [0, 1, 2], np.eye(4), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="db_labels"):
        retrieval_metrics(emb, [0, 1, 2], emb.copy(), [0, 1])
    with pytest.raises(ValueError, match="negative"):
        retrieval_metrics(emb, [0, -1, 2], emb.copy(), [0, 1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(np.array([[np.nan, 0, 0]]), [0], emb, [0, 1, 2])
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(emb, [0, 1, 2], emb.copy(), [0, 1, 2], ks=(0, 1))
    with pytest.raises(ValueError, match="0 and 1"):
        retrieval_metrics(emb, np.eye(3) * 2, emb.copy(), np.eye(3), multi_label=True)
    with pytest.raises(ValueError, match="class_names"):
        retrieval_metrics(emb, [0, 1, 2], emb.copy(), [0, 1, 2], class_names=["a", "b"])


@pytest.mark.cuda
@pytest.mark.parametrize("multi_label", [False, True])
def test_cuda_gives_the_cpu_result(multi_label: bool) -> None:
    rng = np.random.default_rng(8)
    q, d = rng.normal(size=(70, 16)).astype(np.float32), rng.normal(size=(400, 16)).astype(np.float32)
    if multi_label:
        ql, dl = (rng.random((70, 5)) < 0.3).astype(int), (rng.random((400, 5)) < 0.3).astype(int)
    else:
        ql, dl = rng.integers(0, 6, 70), rng.integers(0, 6, 400)
    cpu = retrieval_metrics(q, ql, d, dl, multi_label=multi_label, batch_size=32)
    gpu = retrieval_metrics(q, ql, d, dl, multi_label=multi_label, batch_size=32, device="cuda")
    # Matmul rounding may differ between devices; the random scores have no near-ties at that level.
    assert gpu["map_at_all"] == pytest.approx(cpu["map_at_all"], abs=1e-9)
    assert gpu["precision_at_k"] == cpu["precision_at_k"]
    assert gpu["per_class"] == cpu["per_class"]
