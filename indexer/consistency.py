"""Database <-> vector store (FAISS or Milvus) <-> manifest checks, shared by ``Collection.open`` / ``verify``.

Vocabulary (also used in messages):

* *lagging rows*: database rows newer than every id in the index. They are what a build killed between two index
  saves leaves behind, and are added from their stored embeddings on open (the database is the truth).
* *orphan rows*: database rows without a vector in the index that are not lagging.
* *missing rows*: ids in the index without a database row.

Orphan and missing rows mean the two have drifted apart; only ``msir-index rebuild`` repairs that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.embedder import Embedder
from indexer.manifest import Manifest

if TYPE_CHECKING:
    from indexer.metadata.queries import MetadataStore
    from indexer.vectors.backends import VectorStore

REBUILD_HINT = "run `msir-index rebuild {dir}` to rebuild the index from the database"
SAMPLE = 256


@dataclass(frozen=True)
class IdDiff:
    lagging: np.ndarray
    orphans: np.ndarray
    missing: np.ndarray

    @property
    def drifted(self) -> bool:
        return bool(len(self.orphans) or len(self.missing))


def diff_ids(db_ids: np.ndarray, index_ids: np.ndarray, newest: int | None = None) -> IdDiff:
    """``newest``: the index's largest id, when ``index_ids`` is only a sample of them (``verify --sample``)."""
    not_indexed = np.setdiff1d(db_ids, index_ids, assume_unique=True)
    missing = np.setdiff1d(index_ids, db_ids, assume_unique=True)
    if newest is None:
        newest = int(index_ids.max()) if len(index_ids) else -1
    return IdDiff(
        lagging=not_indexed[not_indexed > newest],
        orphans=not_indexed[not_indexed <= newest],
        missing=missing,
    )


def show_ids(ids: np.ndarray | list[int], limit: int = 10) -> str:
    values = [int(i) for i in list(ids)[:limit]]
    more = f", … ({len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(map(str, values)) + more


def drift_problems(diff: IdDiff) -> list[str]:
    problems = []
    if len(diff.orphans):
        problems.append(
            f"orphan rows: {len(diff.orphans)} database row(s) have no vector in the index "
            f"(ids {show_ids(diff.orphans)})"
        )
    if len(diff.missing):
        problems.append(
            f"missing rows: {len(diff.missing)} index id(s) have no database row (ids {show_ids(diff.missing)})"
        )
    return problems


def identity_problems(
    manifest: Manifest, info: dict[str, Any], embedder: Embedder, index: VectorStore | None
) -> list[str]:
    """Checkpoint, dimension and pairing (manifest <-> database) disagreements."""
    problems = []
    if info.get("collection_id") != manifest.collection_id:
        problems.append(
            f"database mismatch: the database holds collection {info.get('collection_id')!r}, the manifest "
            f"describes {manifest.collection_id!r} (wrong --db for this folder?)"
        )
    if manifest.checkpoint.sha256 != embedder.checkpoint_sha256:
        problems.append(
            f"checkpoint mismatch: the collection was built with {manifest.checkpoint.path} (weights sha256 "
            f"{manifest.checkpoint.sha256[:12]}…), got {embedder.checkpoint_path} "
            f"({embedder.checkpoint_sha256[:12]}…); use the original checkpoint, or build a new collection "
            f"for the new one"
        )
    elif info.get("checkpoint_sha256") not in (None, manifest.checkpoint.sha256):
        problems.append(
            f"checkpoint mismatch: the database's embeddings come from weights "
            f"{str(info.get('checkpoint_sha256'))[:12]}…, the manifest names {manifest.checkpoint.sha256[:12]}…"
        )
    dims = {"manifest": manifest.embedding_dim, "checkpoint": embedder.dim}
    if info.get("embedding_dim") is not None:
        dims["database"] = int(info["embedding_dim"])
    if index is not None:
        dims["index"] = index.dim
    if len(set(dims.values())) > 1:
        problems.append("dimension mismatch: " + ", ".join(f"{k} {v}" for k, v in dims.items()))
    return problems


def deep_problems(
    store: MetadataStore, index: VectorStore, manifest: Manifest, saved: bool, sample: np.ndarray | None = None
) -> list[str]:
    """The slower checks of ``verify``: stored embeddings, duplicates, ivfpq parts, a sample of vectors.

    ``sample`` (``verify --sample``): ids of rows to compare instead of :data:`SAMPLE` random index ids, and no
    scan of the table (embedding lengths are checked on the sampled rows; sha256 uniqueness is the database's own
    constraint)."""
    problems = []
    found: dict[str, Any] = (
        store.problems(manifest.embedding_dim) if sample is None else {"bad_embedding": [], "duplicate_sha256": []}
    )
    if found["bad_embedding"]:
        problems.append(
            f"bad embeddings: {len(found['bad_embedding'])} row(s) do not hold {manifest.embedding_dim} float32 "
            f"values (ids {show_ids(found['bad_embedding'])})"  # type: ignore[arg-type]
        )
    if found["duplicate_sha256"]:
        problems.append(f"duplicate sha256 values stored: {found['duplicate_sha256'][:5]}")
    if index.index_type == "ivfpq" and index.trained:
        ann = index.ann_ids()
        if len(ann) != index.ntotal or not np.array_equal(ann, index.ids()):
            problems.append(f"ivfpq parts disagree: IVF-PQ holds {len(ann)} vectors, the exact store {index.ntotal}")
    if saved and manifest.row_count != index.ntotal:
        problems.append(f"manifest row_count {manifest.row_count} != {index.ntotal} vectors in the index file")
    if manifest.index.type != index.index_type:
        problems.append(f"index type mismatch: manifest {manifest.index.type!r}, index {index.index_type!r}")
    ids = index.ids() if sample is None else np.intersect1d(sample, index.ids())
    if len(ids) and not found["bad_embedding"]:
        rng = np.random.default_rng(0)
        if sample is None and len(ids) > SAMPLE:
            ids = np.sort(rng.choice(ids, SAMPLE, replace=False))
        stored = store.vectors(ids)
        short = [i for i, v in stored.items() if v.shape != (manifest.embedding_dim,)]
        if short:
            problems.append(
                f"bad embeddings: {len(short)} sampled row(s) do not hold {manifest.embedding_dim} float32 values "
                f"(ids {show_ids(sorted(short))})"
            )
        keys = [i for i in ids.tolist() if i in stored and i not in short]
        if keys:
            in_index = index.reconstruct(keys)
            in_db = np.stack([stored[i] for i in keys])
            bad = [k for k, a, b in zip(keys, in_index, in_db, strict=True) if not np.allclose(a, b, atol=1e-5)]
            if bad:
                problems.append(
                    f"vector mismatch: {len(bad)} of {len(keys)} sampled vectors differ between the index and "
                    f"the database (ids {show_ids(bad)})"
                )
    return problems
