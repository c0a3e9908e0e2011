"""``manifest.json``: what the FAISS index beside it was built from, so a mismatch is caught before a search.

Written atomically after every index save. ``generation`` numbers the index builds (a rebuild, by any process, bumps
it and records it in the database too) and ``seq`` is the change-feed position the saved index reflects: a process
never saves over a newer generation or a later position (:meth:`Manifest.is_newer_than`).

The checkpoint is identified by the sha256 of its weights (from the checkpoint JSON), not by its path: a moved
checkpoint is fine, a retrained one is refused.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from indexer.errors import CollectionError
from msir_core.atomic import atomic_write_text
from msir_core.versioned_json import read_versioned_json

MANIFEST_FILE = "manifest.json"
FORMAT = "msir-collection"
FORMAT_VERSION = 2  # 2: generation + seq


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CheckpointRef(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    path: str
    sha256: str  # weights_sha256 recorded in the checkpoint JSON
    model_name: str


class IndexSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    params: dict[str, Any]
    file: str = "index.faiss"
    # Where the vectors live (indexer.vectors.backends): "faiss" (the file above) or "milvus" (a Milvus collection
    # named by index.milvus.json). uri: the Milvus URI without credentials; None = milvus.db in the folder.
    backend: str = "faiss"
    uri: str | None = None
    # ``--index auto``: the inputs and reason of the choice (indexer.vectors.auto); None for an explicit type.
    auto: dict[str, Any] | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    collection_id: str
    checkpoint: CheckpointRef
    embedding_dim: int
    metric: str = "inner_product"  # on L2-normalised embeddings, i.e. cosine similarity
    index: IndexSpec
    row_count: int
    database: str | None  # None: metadata.db in the collection folder; otherwise the URL without password
    generation: int = 0  # index build number (0: a manifest older than the change feed)
    seq: int = 0  # change-feed position the saved index reflects (changes after it are applied on load)
    created_at: str
    updated_at: str

    @classmethod
    def new(
        cls,
        collection_id: str,
        checkpoint: CheckpointRef,
        embedding_dim: int,
        index_type: str,
        params: dict[str, Any],
        database: str | None,
        *,
        backend: str = "faiss",
        uri: str | None = None,
    ) -> Manifest:
        now = now_iso()
        return cls(
            collection_id=collection_id,
            checkpoint=checkpoint,
            embedding_dim=embedding_dim,
            index=IndexSpec(type=index_type, params=params, backend=backend, uri=uri),
            row_count=0,
            database=database,
            created_at=now,
            updated_at=now,
        )

    @classmethod
    def path_in(cls, directory: Path) -> Path:
        return directory / MANIFEST_FILE

    @classmethod
    def exists(cls, directory: Path) -> bool:
        return cls.path_in(directory).is_file()

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = cls.path_in(directory)
        if not path.is_file():
            raise CollectionError(
                f"{directory}: not a collection ({MANIFEST_FILE} missing); create one with `msir-index build`"
            )
        raw = read_versioned_json(path, fmt=FORMAT, max_version=FORMAT_VERSION, error=CollectionError,
                                  what="an msir collection manifest", unreadable="unreadable manifest")  # fmt: skip
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise CollectionError(f"{path}: invalid manifest: {error}") from error

    def position(self) -> tuple[int, int]:
        return self.generation, self.seq

    def is_newer_than(self, other: Manifest) -> bool:
        return self.position() > other.position()

    @classmethod
    def peek(cls, directory: Path) -> Manifest | None:
        """The manifest on disk, or None when there is none (or it cannot be read)."""
        try:
            return cls.load(directory)
        except CollectionError:
            return None

    def save(self, directory: Path) -> None:
        self.updated_at = now_iso()
        atomic_write_text(self.path_in(directory), json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
