"""Memory-mapped indexes (MSIR_INDEX_MMAP): the same answers as an index read into memory, the vectors really
mapped (not copied), and writes — a follower's adds and removals — going through the copy-on-write path."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import Collection, NewImage
from indexer.vectors.faiss_index import VectorIndex
from indexer.vectors.interface import BackendConfig
from tests.indexer.conftest import write_images

from .test_faiss_index import clustered

N, DIM, K = 3000, 16, 10
OPTIONS = {"ivfpq": {"train_size": 1000, "nlist": 16, "m": 4}, "hnsw": {"M": 8}, "flat": None}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, _ = clustered(N + 40, dim=DIM, centres=30, noise=0.2, seed=5)
    return x[:N], x[N:], np.arange(10, N + 10, dtype=np.int64)


def _mapped_vectors(index: VectorIndex) -> faiss.Index:
    """The IndexFlat holding the vectors that mmap maps (flat: the index; hnsw: its storage; ivfpq: exact store)."""
    holder = index.exact if index.exact is not None else index.main
    inner = faiss.downcast_index(holder.index)
    return faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSWFlat) else inner


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_mapped_index_answers_the_same_and_copies_on_write(
    tmp_path: Path, data: tuple[np.ndarray, ...], kind: str
) -> None:
    db, queries, ids = data
    built = VectorIndex(kind, DIM, OPTIONS[kind])
    built.add(ids, db)
    built.save(tmp_path)
    memory = VectorIndex.load(tmp_path, kind, DIM, OPTIONS[kind])
    mapped = VectorIndex.load(tmp_path, kind, DIM, OPTIONS[kind], mmap=True)
    assert mapped.mapped and mapped.describe()["mmap"] is True and memory.describe()["mmap"] is False
    assert _mapped_vectors(mapped).codes.is_owned is False  # a view of the file, not a copy
    assert _mapped_vectors(memory).codes.is_owned is True
    allowed = ids[::7]
    for subset in (None, allowed, ids[:40]):
        expected, got = memory.search(queries, K, subset), mapped.search(queries, K, subset)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(mapped.reconstruct(ids[:5]), memory.reconstruct(ids[:5]))

    # A follower's write: the mapped parts are copied in first (FAISS would abort writing into the mapping).
    new_ids = np.array([10**6, 10**6 + 1], np.int64)
    mapped.add(new_ids, queries[:2])
    assert not mapped.mapped and _mapped_vectors(mapped).codes.is_owned is True
    assert mapped.search(queries[:2], 1)[1][:, 0].tolist() == new_ids.tolist()
    assert mapped.remove([int(ids[0]), 10**6]) == 2 and mapped.ntotal == N
    mapped.save(tmp_path)  # the new files replace the ones still mapped by others (atomic rename: old pages stay)
    again = VectorIndex.load(tmp_path, kind, DIM, OPTIONS[kind], mmap=True)
    assert again.ntotal == N and again.search(queries[1:2], 1)[1][0, 0] == 10**6 + 1


def test_hnsw_removals_keep_the_mapping_until_a_compaction(tmp_path: Path, data: tuple[np.ndarray, ...]) -> None:
    db, queries, ids = data
    built = VectorIndex("hnsw", DIM, OPTIONS["hnsw"])
    built.add(ids, db)
    built.save(tmp_path)
    mapped = VectorIndex.load(tmp_path, "hnsw", DIM, OPTIONS["hnsw"], mmap=True)
    top = int(mapped.search(queries[:1], 1)[1][0, 0])
    assert mapped.remove([top]) == 1 and mapped.mapped  # a tombstone: the graph is not written
    assert top not in mapped.search(queries[:1], K)[1][0]
    mapped.remove(ids[: N // 4])  # past the compaction threshold: a new graph, built in memory
    assert not mapped.mapped and len(mapped.deleted) == 0 and mapped.ntotal == N - N // 4 - (top >= ids[N // 4])


def test_a_mapped_collection_follows_another_process_adds(tmp_path: Path, checkpoint: Path) -> None:
    images = write_images(tmp_path / "imgs", 10)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        col.add_images([NewImage(p) for p in images[:6]])
    reader = Collection.open(directory, device="cpu", backend_config=BackendConfig(mmap=True))
    writer = Collection.open(directory, device="cpu")
    try:
        assert reader.stats()["index"]["mmap"] is True
        added = writer.add_images([NewImage(p) for p in images[6:]]).added
        assert reader.refresh() is True and reader.ntotal == 10
        assert reader.stats()["index"]["mmap"] is False  # copied in for the followed adds
        for image_id in added:
            assert reader.search(reader.vector(image_id)[None], 1)[0][0].id == image_id
    finally:
        writer.close()
        reader.close()
