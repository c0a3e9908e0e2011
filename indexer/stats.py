"""What ``msir-index stats`` and ``/v1/collection`` report about a collection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from indexer.vectors.faiss_index import DELETED_FILE, INDEX_FILE, VECTORS_FILE

if TYPE_CHECKING:
    from indexer.collection import Collection


def stats(col: Collection) -> dict[str, Any]:
    """What ``msir-index stats`` and ``/v1/collection`` report: rows, index, model, files, sync position."""
    summary = col.store.summary()
    files = {
        name: (col.directory / name).stat().st_size
        for name in (INDEX_FILE, VECTORS_FILE, DELETED_FILE, "manifest.json", "metadata.db")
        if (col.directory / name).is_file()
    }
    with col._rw.read():
        index = col._index.describe()
    return {
        "directory": str(col.directory),
        "collection_id": col.manifest.collection_id,
        "database": col.store.display_url,
        "rows": col.store.count(),
        "index": index,
        "embedding_dim": col.manifest.embedding_dim,
        "metric": col.manifest.metric,
        "checkpoint": col.manifest.checkpoint.model_dump(),
        "class_names": col.embedder.class_names,
        "multi_label": col.embedder.multi_label,
        "created_at": col.manifest.created_at,
        "updated_at": col.manifest.updated_at,
        "unsaved_changes": col._dirty,
        "sync": col.sync_state(),
        "file_bytes": files,
        **summary,
    }
