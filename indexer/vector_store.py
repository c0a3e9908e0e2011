"""The vector store behind a collection: one interface, two backends (FAISS in-process, Milvus as a service).

:class:`VectorStore` is everything :class:`~indexer.collection.Collection`, :mod:`indexer.consistency` and the
service ask of an index; :func:`new_store` / :func:`load_store` pick the implementation from the manifest's
``index.backend``, so nothing else knows which one it talks to.

* ``faiss`` (default): :class:`FaissStore`, the embedded FAISS index of :mod:`indexer.faiss_index` saved beside the
  manifest. Filters run in the collection (over-fetch, filter on database rows, grow).
* ``milvus``: :class:`indexer.milvus_store.MilvusStore`, a Milvus collection reached with pymilvus: a milvus-lite
  file (``<dir>/milvus.db`` by default: development and tests) or ``http://host:19530`` (standalone / cluster).
  Label, split and exclusion filters are pushed down as Milvus scalar filters.

Either way the SQL database is the truth; the store is a copy that ``rebuild`` recreates and ``verify`` checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from indexer.errors import CollectionError
from indexer.faiss_index import VectorIndex

if TYPE_CHECKING:
    from indexer.manifest import IndexSpec
    from indexer.search import Filters, GetMany

BACKENDS = ("faiss", "milvus")


@dataclass(frozen=True)
class BackendConfig:
    """Connection settings that are not saved in the manifest: a Milvus URI that overrides the recorded one (the
    service may reach the same Milvus under another host name) and its token (never written to disk)."""

    milvus_uri: str | None = None
    milvus_token: str | None = field(default=None, repr=False)


@runtime_checkable
class VectorStore(Protocol):
    """Ids are database ids; scores are inner products of L2-normalised vectors (cosine). Not thread-safe:
    :class:`~indexer.collection.Collection` serialises writes and lets reads run between them."""

    backend: str
    index_type: str
    dim: int
    options: dict[str, Any]
    device: str
    #: True when :meth:`search` applies ``filters`` itself (so a filtered search needs no over-fetching).
    filters_pushed_down: bool

    @property
    def ntotal(self) -> int: ...

    @property
    def trained(self) -> bool: ...

    @property
    def supports_remove(self) -> bool: ...

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray, *, train: bool = True) -> None: ...

    def maybe_train(self) -> bool: ...

    def remove(self, ids: np.ndarray | list[int]) -> int: ...

    def refresh(self, ids: np.ndarray | list[int]) -> None:
        """The database changed these rows' labels or split: update what the store keeps of them."""

    def ids(self) -> np.ndarray: ...

    def ann_ids(self) -> np.ndarray: ...

    def reconstruct(self, ids: np.ndarray | list[int]) -> np.ndarray: ...

    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...

    def save(self, directory: Path) -> None: ...

    def discard(self) -> None:
        """Called on a store replaced by a rebuild, once its successor is saved: free what it holds."""

    def close(self) -> None:
        """Release connections (the data stays)."""


class FaissStore(VectorIndex):
    """The FAISS backend: :class:`~indexer.faiss_index.VectorIndex` as it always was, behind the interface."""

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


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise CollectionError(f"unknown index backend {backend!r}; expected one of {list(BACKENDS)}")
    return backend


def new_store(
    spec: IndexSpec,
    dim: int,
    *,
    directory: Path,
    collection_id: str,
    records: GetMany,
    device: str = "cpu",
    config: BackendConfig | None = None,
) -> VectorStore:
    """An empty store of the manifest's backend and index type (a new Milvus collection is created)."""
    if check_backend(spec.backend) == "faiss":
        return FaissStore(spec.type, dim, spec.params, device=device)
    from indexer.milvus_store import MilvusStore  # pymilvus is only imported by collections that use it

    return MilvusStore.create(spec, dim, directory=directory, collection_id=collection_id, records=records,
                              config=config or BackendConfig())  # fmt: skip


def load_store(
    spec: IndexSpec,
    dim: int,
    *,
    directory: Path,
    collection_id: str,
    records: GetMany,
    device: str = "cpu",
    config: BackendConfig | None = None,
) -> VectorStore:
    """The saved store of a collection: FAISS files beside the manifest, or the Milvus collection they name."""
    if check_backend(spec.backend) == "faiss":
        return FaissStore.load(directory, spec.type, dim, spec.params, device=device)
    from indexer.milvus_store import MilvusStore

    return MilvusStore.load(spec, dim, directory=directory, collection_id=collection_id, records=records,
                            config=config or BackendConfig())  # fmt: skip


def index_spec(
    index_type: str,
    options: dict[str, Any],
    backend: str,
    config: BackendConfig | None,
    directory: Path,
) -> IndexSpec:
    """The manifest's ``index`` entry of a new index: the Milvus URI is recorded without credentials (and as None
    for the default ``milvus.db`` in the folder, so the folder can move)."""
    from indexer.manifest import IndexSpec

    uri = None
    if check_backend(backend) == "milvus":
        from indexer.milvus_store import recorded_uri

        uri = recorded_uri((config or BackendConfig()).milvus_uri, directory)
    elif config is not None and config.milvus_uri:
        raise CollectionError("a Milvus URI was given for a faiss index; pass --backend milvus with it")
    return IndexSpec(type=index_type, params=options, backend=backend, uri=uri)


def stale_files(backend: str) -> tuple[str, ...]:
    """Files in the collection folder that belong to the other backend (removed after a switch is saved)."""
    from indexer.faiss_index import INDEX_FILE, VECTORS_FILE
    from indexer.milvus_store import POINTER_FILE

    return (INDEX_FILE, VECTORS_FILE) if backend == "milvus" else (POINTER_FILE,)
