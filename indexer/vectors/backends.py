"""The registry of vector backends: :func:`new_store` / :func:`load_store` pick the implementation from the
manifest's ``index.backend``, so nothing else knows which one it talks to.

* ``faiss`` (default): :mod:`indexer.vectors.faiss_store`, the embedded FAISS index saved beside the manifest.
* ``milvus``: :mod:`indexer.vectors.milvus_store`, a Milvus collection reached with pymilvus: a milvus-lite file
  (``<dir>/milvus.db`` by default: development and tests) or ``http://host:19530`` (standalone / cluster). Label,
  split and exclusion filters are pushed down as Milvus scalar filters.

Adding a backend is one module exposing ``BACKEND`` (an :class:`~indexer.vectors.interface.Backend`) and one line
in :data:`_MODULES`. Modules are imported by name on first use, so a collection that never uses Milvus never
imports its client code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.errors import CollectionError
from indexer.vectors.interface import Backend, BackendConfig, StoreSite, VectorStore

if TYPE_CHECKING:
    from indexer.manifest import IndexSpec
    from indexer.search import GetMany

#: backend name -> the module that defines its ``BACKEND``
_MODULES: dict[str, str] = {
    "faiss": "indexer.vectors.faiss_store",
    "milvus": "indexer.vectors.milvus_store",
}
BACKENDS = tuple(_MODULES)


def check_backend(backend: str) -> str:
    if backend not in _MODULES:
        raise CollectionError(f"unknown index backend {backend!r}; expected one of {list(BACKENDS)}")
    return backend


def backend(name: str) -> Backend:
    """The registered backend called ``name`` (``CollectionError`` naming the known ones otherwise)."""
    found: Backend = importlib.import_module(_MODULES[check_backend(name)]).BACKEND
    return found


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
    site = StoreSite(directory, collection_id, records, device, config or BackendConfig())
    return backend(spec.backend).create(spec, dim, site)


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
    site = StoreSite(directory, collection_id, records, device, config or BackendConfig())
    return backend(spec.backend).load(spec, dim, site)


def index_spec(
    index_type: str,
    options: dict[str, Any],
    backend_name: str,
    config: BackendConfig | None,
    directory: Path,
) -> IndexSpec:
    """The manifest's ``index`` entry of a new index: the URI is recorded without credentials (and as None for
    the default ``milvus.db`` in the folder, so the folder can move)."""
    from indexer.manifest import IndexSpec

    uri = backend(backend_name).recorded_uri(config or BackendConfig(), directory)
    return IndexSpec(type=index_type, params=options, backend=backend_name, uri=uri)


def stale_files(backend_name: str) -> tuple[str, ...]:
    """Files in the collection folder that belong to the other backends (removed after a switch is saved)."""
    return tuple(f for name in BACKENDS if name != backend_name for f in backend(name).own_files)


__all__ = ["BACKENDS", "BackendConfig", "VectorStore", "backend", "check_backend", "index_spec", "load_store",
           "new_store", "stale_files"]  # fmt: skip
