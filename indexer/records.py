"""Plain data exchanged through :class:`indexer.Collection` (no ORM objects leak out of ``indexer.metadata.tables``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One indexed image: ``id`` is also its FAISS id."""

    id: int
    path: Path | None
    uri: str
    sha256: str
    labels: list[str]
    split: str | None
    width: int
    height: int
    source: str
    added_at: datetime
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": str(self.path) if self.path is not None else None,
            "uri": self.uri,
            "sha256": self.sha256,
            "labels": list(self.labels),
            "split": self.split,
            "width": self.width,
            "height": self.height,
            "source": self.source,
            "added_at": self.added_at.isoformat(),
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Hit:
    """One search result; ``score`` is the cosine similarity (inner product of L2-normalised embeddings), or
    with re-ranking the re-ranking's score (higher is better; :func:`indexer.search.reranked_search`)."""

    id: int
    score: float
    record: ImageRecord

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": self.score,
            **{k: v for k, v in self.record.to_json().items() if k != "id"},
        }


@dataclass(frozen=True)
class NewImage:
    """An image file to add; ``labels`` are class names."""

    path: Path
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    source: str = "upload"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Upload:
    """Bytes to store in the collection (``uploads/``) and index; ``suffix`` is the file type (``.png``...)."""

    data: bytes
    suffix: str
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class AddReport:
    """Outcome of an add: new ids, ``(uri, existing id)`` duplicates and ``(uri, reason)`` failures."""

    added: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class VerifyReport:
    """Outcome of :meth:`indexer.Collection.verify`: ``ok`` is ``not problems``."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class EmbedResult(NamedTuple):
    """L2-normalised float32 embeddings ``[B, D]`` and float32 logits ``[B, C]``."""

    embeddings: np.ndarray
    logits: np.ndarray
