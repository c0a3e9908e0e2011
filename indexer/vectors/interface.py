"""What a vector backend is: the :class:`VectorStore` a collection talks to and the :class:`Backend` that makes one.

:class:`VectorStore` is everything :class:`~indexer.collection.Collection`, :mod:`indexer.consistency` and the
service ask of an index. Either way the SQL database is the truth; the store is a copy that ``rebuild`` recreates
and ``verify`` checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from indexer.manifest import IndexSpec
    from indexer.search import Filters, GetMany


@dataclass(frozen=True)
class BackendConfig:
    """Settings of this process that are not saved in the manifest: a Milvus URI that overrides the recorded one
    (the service may reach the same Milvus under another host name), its token (never written to disk), and
    whether saved FAISS files are opened memory-mapped (:mod:`indexer.vectors.faiss_index`, "Memory-mapped")."""

    milvus_uri: str | None = None
    milvus_token: str | None = field(default=None, repr=False)
    mmap: bool = False


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


@dataclass(frozen=True)
class StoreSite:
    """Where a collection's store lives and what a backend needs besides the index spec: the collection folder and
    id, the database rows (Milvus keeps labels and splits for its filters), the device and the connection settings."""

    directory: Path
    collection_id: str
    records: GetMany
    device: str = "cpu"
    config: BackendConfig = field(default_factory=BackendConfig)


class Backend(Protocol):
    """One vector backend, registered by name in :mod:`indexer.vectors.backends`."""

    #: the manifest's ``index.backend`` value
    name: str
    #: files in the collection folder that hold this backend's data (removed after a switch to another backend)
    own_files: tuple[str, ...]

    def create(self, spec: IndexSpec, dim: int, site: StoreSite) -> VectorStore:
        """An empty store of ``spec``'s index type."""

    def load(self, spec: IndexSpec, dim: int, site: StoreSite) -> VectorStore:
        """The saved store the manifest's ``spec`` names."""

    def recorded_uri(self, config: BackendConfig, directory: Path) -> str | None:
        """What the manifest records of where the vectors live (never a credential); refuses settings of another
        backend."""
