"""The FAISS backend: the in-process index of :mod:`indexer.vectors.faiss_index`, saved beside the manifest.

Filters run in the collection (over-fetch, filter on database rows, grow: :mod:`indexer.search`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import CollectionError
from indexer.vectors.faiss_index import INDEX_FILE, VECTORS_FILE, VectorIndex
from indexer.vectors.interface import BackendConfig, StoreSite, VectorStore

if TYPE_CHECKING:
    from indexer.manifest import IndexSpec
    from indexer.search import Filters


class FaissStore(VectorIndex):
    """The FAISS backend: :class:`~indexer.vectors.faiss_index.VectorIndex` as it always was, behind the interface."""

    backend = "faiss"
    filters_pushed_down = False

    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]:
        # Filters live in the database: the collection over-fetches and filters the rows (indexer.search).
        return super().search(queries, k)

    def refresh(self, ids: np.ndarray | list[int]) -> None:
        """FAISS keeps vectors only: labels and splits are read from the database at search time."""

    def discard(self) -> None:
        """Nothing outside the process: the garbage collector frees the index."""

    def close(self) -> None:
        """Nothing to release."""


class FaissBackend:
    name = "faiss"
    own_files = (INDEX_FILE, VECTORS_FILE)

    def create(self, spec: IndexSpec, dim: int, site: StoreSite) -> VectorStore:
        return FaissStore(spec.type, dim, spec.params, device=site.device)

    def load(self, spec: IndexSpec, dim: int, site: StoreSite) -> VectorStore:
        return FaissStore.load(site.directory, spec.type, dim, spec.params, device=site.device)

    def recorded_uri(self, config: BackendConfig, directory: Path) -> str | None:
        if config.milvus_uri:
            raise CollectionError("a Milvus URI was given for a faiss index; pass --backend milvus with it")
        return None


BACKEND = FaissBackend()
