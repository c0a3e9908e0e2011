"""Both index backends in the indexer tests: the ``backend`` fixture and edits of a saved index behind the
collection's back (as a kill or a bad copy would leave it), whichever backend holds it."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.manifest import Manifest
from indexer.vectors.backends import load_store
from indexer.vectors.faiss_index import INDEX_FILE

# faiss; milvus through milvus-lite; milvus through a real standalone server (tests/indexer/milvus_server.py).
BACKENDS = ["faiss", "milvus", pytest.param("milvus-server", marks=pytest.mark.milvus_server)]


def drop_saved_vectors(directory: Path, ids: list[int]) -> None:
    """Remove vectors from the saved index only (the database keeps the rows)."""
    manifest = Manifest.load(directory)
    if manifest.index.backend == "faiss":
        index = faiss.read_index(str(directory / INDEX_FILE))
        index.remove_ids(np.asarray(ids, dtype=np.int64))
        faiss.write_index(index, str(directory / INDEX_FILE))
        return
    store = load_store(
        manifest.index, manifest.embedding_dim, directory=directory, collection_id=manifest.collection_id,
        records=lambda _ids: {},
    )  # fmt: skip
    try:
        assert store.remove(ids) == len(ids)
        store.save(directory)
    finally:
        store.close()
