"""msir indexer: image collections = SQL metadata (the truth, embeddings included) + a rebuildable FAISS index.

``indexer.Collection`` is the API the ``msir-index`` CLI and the service use (contract: docs/architecture.md).
"""

from indexer.collection import Collection
from indexer.embedder import Embedder
from indexer.errors import CheckpointMismatch, CollectionError, ConsistencyError, DatabaseUnavailable
from indexer.ingest.pipeline import BuildReport
from indexer.records import AddReport, EmbedResult, Hit, ImageRecord, NewImage, Upload, VerifyReport
from msir_core.retrieval.rerank import RerankConfig, RerankMethod  # search option, re-exported for the app

__all__ = [
    "AddReport",
    "BuildReport",
    "CheckpointMismatch",
    "Collection",
    "CollectionError",
    "ConsistencyError",
    "DatabaseUnavailable",
    "EmbedResult",
    "Embedder",
    "Hit",
    "ImageRecord",
    "NewImage",
    "RerankConfig",
    "RerankMethod",
    "Upload",
    "VerifyReport",
]
