"""FAISS layer: exactness of flat, recall of ivfpq (exact re-ranking) and hnsw, removal, atomic saves."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.errors import CollectionError
from indexer.vectors.faiss_index import INDEX_FILE, VECTORS_FILE, VectorIndex, resolve_options


def clustered(n: int, dim: int = 64, centres: int = 100, noise: float = 0.2, seed: int = 0) -> np.ndarray:
    """Gaussian mixture on the unit sphere. noise=0.2 per dimension makes clusters overlap: about a fifth of each
    query's true 10 nearest neighbours belong to other clusters (checked below)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    labels = rng.integers(0, centres, n)
    x = c[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


def test_flat_is_exact() -> None:
    x, _ = clustered(500, dim=16, centres=5)
    ids = np.arange(100, 600)
    index = VectorIndex("flat", 16)
    index.add(ids, x)
    scores, found = index.search(x[:7], 5)
    brute = x[:7] @ x.T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :5] + 100
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected - 100, 1), rtol=1e-5)
    # Asking for more than there is pads with -1 / -inf.
    small = VectorIndex("flat", 16)
    small.add([1, 2], x[:2])
    scores, i = small.search(x[:1], 5)
    assert scores.shape == i.shape == (1, 2) and set(i[0]) == {1, 2}


def test_ivfpq_and_hnsw_recall_against_flat() -> None:
    x, labels = clustered(20_200)
    db, queries = x[:20_000], x[20_000:]
    ids = np.arange(1, 20_001)
    flat = VectorIndex("flat", 64)
    flat.add(ids, db)
    _, truth = flat.search(queries, 10)
    same_cluster = (labels[truth - 1] == labels[20_000:, None]).mean()
    assert 0.6 < same_cluster < 0.95  # overlapping clusters, not trivially separable

    ivfpq = VectorIndex("ivfpq", 64)  # defaults: nlist ~ sqrt(N), m = dim/4, nprobe 32, shortlist 10k
    ivfpq.add(ids, db)
    assert ivfpq.trained and ivfpq.describe()["nlist"] == 141
    scores, found = ivfpq.search(queries, 10)
    assert recall_at(found, truth) >= 0.95
    # Re-ranked scores are exact cosines of the returned ids.
    np.testing.assert_allclose(scores[:, 0], np.einsum("qd,qd->q", queries, db[found[:, 0] - 1]), rtol=1e-5)

    hnsw = VectorIndex("hnsw", 64, {"M": 16, "ef_construction": 40, "ef_search": 256})
    hnsw.add(ids, db)
    _, found = hnsw.search(queries, 10)
    assert recall_at(found, truth) >= 0.95


def test_ivfpq_untrained_then_trained_and_removal(tmp_path: Path) -> None:
    x, _ = clustered(3000, dim=32, centres=20)
    ids = np.arange(10, 3010)
    index = VectorIndex("ivfpq", 32, {"train_size": 2000, "nlist": 16, "nprobe": 16})
    index.add(ids[:1000], x[:1000])
    assert not index.trained  # below train_size: exact search on the stored vectors
    assert index.search(x[:1], 1)[1][0, 0] == 10
    index.add(ids[1000:], x[1000:])
    assert index.trained and index.ntotal == 3000
    assert index.remove([10, 11, 99_999]) == 2
    assert index.ntotal == 2998 and np.array_equal(index.ann_ids(), index.ids())
    # A bulk load trains once at the end, with nlist fitted to the final count.
    bulk = VectorIndex("ivfpq", 32, {"train_size": 500})
    for start in range(0, 3000, 1000):
        bulk.add(ids[start : start + 1000], x[start : start + 1000], train=False)
    assert not bulk.trained and bulk.maybe_train() and bulk.describe()["nlist"] == 54  # sqrt(3000)
    assert bulk.describe()["nprobe"] == 32 and not bulk.maybe_train()
    assert 10 not in index.search(x[:1], 20)[1]
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path, "ivfpq", 32, index.options)
    assert loaded.trained and np.array_equal(loaded.ids(), index.ids())
    np.testing.assert_array_equal(loaded.search(x[5:9], 5)[1], index.search(x[5:9], 5)[1])


def test_hnsw_removes_by_tombstone() -> None:
    """FAISS cannot remove HNSW nodes; the index marks them deleted instead (test_faiss_filters.py has more)."""
    index = VectorIndex("hnsw", 8)
    index.add([1, 2, 3, 4, 5, 6], np.eye(6, 8, dtype=np.float32))
    assert index.supports_remove
    assert index.remove([1]) == 1
    assert index.ids().tolist() == [2, 3, 4, 5, 6] and index.ntotal == 5
    assert 1 not in index.search(np.eye(1, 8, dtype=np.float32), 6)[1]


def test_failed_save_leaves_previous_index_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = clustered(50, dim=8, centres=3)
    index = VectorIndex("flat", 8)
    index.add(np.arange(50), x)
    index.save(tmp_path)
    before = (tmp_path / INDEX_FILE).read_bytes()
    index.add([1000], x[:1])

    def half_written(idx: faiss.Index, path: str) -> None:
        Path(path).write_bytes(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", half_written)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / INDEX_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE]  # no temp file left
    assert VectorIndex.load(tmp_path, "flat", 8, None).ntotal == 50


def test_unreadable_index_file_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / INDEX_FILE).write_bytes(b"not faiss")
    with pytest.raises(CollectionError, match="msir-index rebuild"):
        VectorIndex.load(tmp_path, "flat", 8, None)
    with pytest.raises(CollectionError, match="missing"):
        VectorIndex.load(tmp_path / "nowhere", "flat", 8, None)
    assert not (tmp_path / VECTORS_FILE).exists()


def test_options_are_validated() -> None:
    assert resolve_options("hnsw", {"M": 8})["M"] == 8
    with pytest.raises(CollectionError, match="unknown option"):
        resolve_options("flat", {"nlist": 4})
    with pytest.raises(CollectionError, match="unknown index type"):
        resolve_options("lsh", None)
    with pytest.raises(CollectionError, match="positive integer"):
        resolve_options("ivfpq", {"nprobe": 0})
    with pytest.raises(CollectionError, match="divide"):
        VectorIndex("ivfpq", 30, {"m": 7})
