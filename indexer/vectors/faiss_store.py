"""The FAISS backend: the in-process index of :mod:`indexer.vectors.faiss_index`, saved beside the manifest.

A label/split filter arrives resolved to the ids that pass (``Filters.allowed``) and restricts the FAISS search
itself (an ``IDSelector``, or exact scoring of few ids); exclusions alone are over-fetched (:mod:`indexer.search`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import CollectionError
from indexer.vectors.faiss_index import DELETED_FILE, INDEX_FILE, VECTORS_FILE, VectorIndex
from indexer.vectors.interface import BackendConfig, StoreSite, VectorStore

if TYPE_CHECKING:
    from indexer.manifest import IndexSpec
    from indexer.search import Filters


class FaissStore(VectorIndex):
    """The FAISS backend: :class:`~indexer.vectors.faiss_index.VectorIndex` as it always was, behind the interface."""

    backend = "faiss"
    filters_pushed_down = False

    def search(  # type: ignore[override]
        self, queries: np.ndarray, k: int, filters: Filters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        # Labels/splits live in the database: the collection passes the ids that pass them (filters.allowed).
        allowed = filters.allowed if filters is not None else None
        if allowed is not None and filters is not None and filters.exclude_ids:
            allowed = np.setdiff1d(allowed, np.fromiter(filters.exclude_ids, np.int64), assume_unique=True)
        return super().search(queries, k, allowed)

    def refresh(self, ids: np.ndarray | list[int]) -> None:
        """FAISS keeps vectors only: labels and splits are read from the database at search time."""

    def discard(self) -> None:
        """Nothing outside the process: the garbage collector frees the index."""

    def close(self) -> None:
        """Nothing to release."""


class FaissBackend:
    name = "faiss"
    own_files = (INDEX_FILE, VECTORS_FILE, DELETED_FILE)

    def create(self, spec: IndexSpec, dim: int, site: StoreSite) -> VectorStore:
        return FaissStore(spec.type, dim, spec.params, device=site.device)

    def load(self, spec: IndexSpec, dim: int, site: StoreSite) -> VectorStore:
        return FaissStore.load(site.directory, spec.type, dim, spec.params, device=site.device, mmap=site.config.mmap)

    def recorded_uri(self, config: BackendConfig, directory: Path) -> str | None:
        if config.milvus_uri:
            raise CollectionError("a Milvus URI was given for a faiss index; pass --backend milvus with it")
        return None


BACKEND = FaissBackend()
