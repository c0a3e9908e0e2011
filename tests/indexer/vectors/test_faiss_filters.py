"""Filters pushed into FAISS (issue #26): a label/split filter arrives as the ids that pass and restricts the search
itself, so a filtered query returns k results whenever k rows pass, at the recall of an unfiltered one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.vectors import faiss_index
from indexer.vectors.faiss_index import VectorIndex

from .test_faiss_index import clustered, recall_at

N, DIM, K = 20_000, 32, 10


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, _ = clustered(N + 100, dim=DIM, centres=100, noise=0.15, seed=3)
    db, queries = x[:N], x[N:]
    ids = np.arange(1, N + 1, dtype=np.int64)
    # 1 % of the rows pass the filter, spread over every cluster (like a label unrelated to the clusters).
    allowed = np.sort(np.random.default_rng(7).choice(ids, N // 100, replace=False))
    return db, queries, ids, allowed


@pytest.fixture(scope="module")
def built(data: tuple[np.ndarray, ...]) -> dict[str, VectorIndex]:
    db, _, ids, _ = data
    indexes = {}
    for kind in ("flat", "ivfpq", "hnsw"):
        index = VectorIndex(kind, DIM)
        index.add(ids, db)
        indexes[kind] = index
    assert indexes["ivfpq"].trained
    return indexes


def _exact(db: np.ndarray, ids: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    keep = np.isin(ids, allowed) if allowed is not None else np.ones(len(ids), bool)
    scores = queries @ db[keep].T
    return ids[keep][np.argsort(-scores, axis=1, kind="stable")[:, :K]]


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw", "flat"])
@pytest.mark.parametrize("path", ["selector", "exact-subset"])
def test_one_percent_filter_returns_k_allowed_hits_at_unfiltered_recall(
    kind: str, path: str, data: tuple[np.ndarray, ...], built: dict[str, VectorIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, queries, ids, allowed = data
    if path == "selector":  # 200 allowed ids would be scored exactly; force the IDSelector search
        monkeypatch.setattr(faiss_index, "EXACT_FILTER_MAX", 0)
    index = built[kind]
    _, unfiltered = index.search(queries, K)
    unfiltered_recall = recall_at(unfiltered, _exact(db, ids, queries, None))

    scores, found = index.search(queries, K, allowed)
    assert found.shape == (len(queries), K)
    assert (found >= 0).all(), "every query gets k results: 200 rows pass"
    assert np.isin(found, allowed).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    filtered_recall = recall_at(found, _exact(db, ids, queries, allowed))
    assert filtered_recall >= unfiltered_recall - 0.03, (filtered_recall, unfiltered_recall)


def test_selector_search_on_untrained_ivfpq_and_empty_and_tiny_filters(data: tuple[np.ndarray, ...]) -> None:
    db, queries, ids, _ = data
    index = VectorIndex("ivfpq", DIM)
    index.add(ids[:500], db[:500])
    assert not index.trained
    allowed = ids[:500:10]
    _, found = index.search(queries[:3], K, allowed)
    np.testing.assert_array_equal(found, _exact(db[:500], ids[:500], queries[:3], allowed))
    # Nothing passes: nothing comes back (not unfiltered hits).
    scores, found = index.search(queries[:3], K, np.zeros(0, np.int64))
    assert (found == -1).all() and np.isneginf(scores).all()
    # Fewer pass than k: all of them, padded with -1.
    _, found = index.search(queries[:2], K, ids[:3])
    assert found.shape == (2, 3) and set(found[0]) == {1, 2, 3}


def test_allowed_ids_missing_from_the_index_are_skipped(data: tuple[np.ndarray, ...]) -> None:
    """The database may be ahead of a follower's copy: allowed ids not (yet) in the index are simply not found."""
    db, queries, ids, _ = data
    for kind in ("flat", "hnsw"):
        index = VectorIndex(kind, DIM)
        index.add(ids[:1000], db[:1000])
        allowed = np.arange(990, 1020, dtype=np.int64)  # 990..1000 present, the rest not
        _, found = index.search(queries[:2], K, allowed)
        assert set(found[0][found[0] >= 0]) <= set(range(990, 1001))
        assert (found[0] >= 0).sum() == K


def test_hnsw_removal_is_a_tombstone_then_a_compaction(data: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    db, queries, ids, allowed = data
    n = 2000
    index = VectorIndex("hnsw", DIM)
    index.add(ids[:n], db[:n])
    graph = index.main
    _, before = index.search(queries[:20], K)
    gone = np.unique(before[:, :3])  # the best hits of the queries: they must disappear from the answers
    assert index.remove(np.concatenate([gone, [n + 50]])) == len(gone)  # an id not held counts for nothing
    assert index.main is graph, "no rebuild for a removal below the compaction threshold"
    assert index.ntotal == n - len(gone) and not np.isin(gone, index.ids()).any()
    assert index.remove(gone) == 0  # removing again is a no-op
    _, after = index.search(queries[:20], K)
    assert (after >= 0).all() and not np.isin(after, gone).any()
    live = np.setdiff1d(ids[:n], gone)
    assert recall_at(after, _exact(db[:n], ids[:n], queries[:20], live)) >= 0.95
    _, filtered = index.search(queries[:20], K, allowed)  # the filtered paths exclude tombstones too
    assert not np.isin(filtered, gone).any()

    # Saved and loaded: the tombstones survive.
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path, "hnsw", DIM, None)
    assert loaded.ntotal == index.ntotal and np.array_equal(loaded.deleted, index.deleted)
    _, again = loaded.search(queries[:20], K)
    assert not np.isin(again, gone).any()

    # Past HNSW_COMPACT_FRACTION of the nodes deleted, the graph is rebuilt from its own live vectors.
    many = np.setdiff1d(ids[: n // 2], gone)
    loaded.remove(many)
    assert len(loaded.deleted) == 0 and int(loaded.main.ntotal) == loaded.ntotal == n - len(gone) - len(many)
    rest = np.setdiff1d(live, many)
    np.testing.assert_array_equal(loaded.ids(), rest)
    np.testing.assert_allclose(loaded.reconstruct(rest[:5]), db[rest[:5] - 1], rtol=1e-6)
    # A deleted id re-added (SQLite may reuse the largest id) replaces its old node.
    index.add([int(gone[0])], db[-1:])
    assert int(gone[0]) in set(index.ids().tolist()) and len(index.deleted) == 0
    np.testing.assert_allclose(index.reconstruct([int(gone[0])]), db[-1:], rtol=1e-6)
