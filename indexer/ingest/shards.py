"""Sharded builds: N processes, on one host or many, index disjoint shards of one source into one collection.

The collection's database must be a server (PostgreSQL) every shard reaches. Each shard embeds its part
(:func:`indexer.ingest.sources.take_shard`) and inserts rows + embeddings only; the database's sha256 uniqueness makes
a re-run or an overlap harmless, and writers queue on the collection's advisory lock. No shard touches the FAISS
index: ``msir-index rebuild DIR --db URL --checkpoint C`` builds it once from the stored embeddings when every
shard has finished (or servers following the database pick the rows up).

    msir-index build DIR --db postgresql+psycopg://... -c model.safetensors --data ROOT --shard 0/2   # host A
    msir-index build DIR --db postgresql+psycopg://... -c model.safetensors --data ROOT --shard 1/2   # host B
    msir-index rebuild DIR --db postgresql+psycopg://... -c model.safetensors
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import make_url

from indexer.embedder import Embedder
from indexer.errors import CollectionError, ConsistencyError
from indexer.ingest.pipeline import DEFAULT_MAX_PIXELS, BuildReport, run_pipeline
from indexer.ingest.sources import Source, take_shard
from indexer.manifest import Manifest, now_iso
from indexer.metadata.queries import MetadataStore
from indexer.metadata.tables import safe_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        index, sep, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            raise CollectionError(f"--shard {text!r}: expected I/N, e.g. 0/4 (shard I of N, 0 <= I < N)") from None
        if not sep or not 0 <= shard.index < shard.count:
            raise CollectionError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return shard

    @classmethod
    def from_env(cls) -> Shard | None:
        """``RANK``/``WORLD_SIZE`` when launched by torchrun (or any launcher that sets them)."""
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return None
        return cls.parse(f"{rank}/{world}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class DatabaseSink:
    """The pipeline's writer for a shard: rows and embeddings into the database, nothing else."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    def existing_uris(self, uris: Sequence[str]) -> dict[str, int]:
        return self.store.existing_uris(uris)

    def commit(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> tuple[list[int | None], dict[int, int]]:
        return self.store.insert_new(rows)


def build_shard(
    directory: Path,
    checkpoint: Path,
    database_url: str,
    source: Source,
    shard: Shard,
    *,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> BuildReport:
    """Index shard ``shard`` of ``source`` into the collection held by ``database_url`` (created if empty)."""
    if make_url(database_url).get_backend_name() == "sqlite":
        raise CollectionError(
            "--shard needs a database server every shard reaches (--db postgresql+psycopg://...), not SQLite"
        )
    embedder = Embedder(checkpoint, device)
    store = MetadataStore(database_url)
    try:
        store.migrate(directory)
        info = store.adopt_info(
            {
                "collection_id": uuid.uuid4().hex,
                "checkpoint_sha256": embedder.checkpoint_sha256,
                "model_name": embedder.meta.model_name,
                "embedding_dim": embedder.dim,
                "created_at": now_iso(),
            }
        )
        if info.get("checkpoint_sha256") != embedder.checkpoint_sha256:
            raise ConsistencyError(
                f"database {safe_url(database_url)} holds collection {info.get('collection_id')} built with another "
                f"checkpoint than {checkpoint}; every shard must use the collection's checkpoint"
            )
        if Manifest.exists(directory):
            manifest = Manifest.load(directory)
            if manifest.collection_id != info["collection_id"]:
                raise ConsistencyError(
                    f"{directory} holds collection {manifest.collection_id}, the database {info['collection_id']}"
                )
        part = take_shard(source, shard.index, shard.count)
        logger.info("shard %s: %d of the %d items of %s", shard, len(part.items), len(source.items), source.name)
        directory.mkdir(parents=True, exist_ok=True)
        return run_pipeline(
            part,
            embedder,
            DatabaseSink(store),
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            report_dir=directory / "reports",
            max_pixels=max_pixels,
        )
    finally:
        store.close()


__all__ = ["DatabaseSink", "Shard", "build_shard"]
