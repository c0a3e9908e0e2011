"""``Collection``: a folder (``manifest.json`` + ``index.faiss`` + ``uploads/``) and a metadata database.

The database is the source of truth, embeddings included; the FAISS index is a copy that is saved atomically,
caught up from the database when it lags (a killed build) and rebuilt from it on demand.

Concurrency: searches and reads run concurrently; writes (add/remove/rebuild) are serialised by a lock in the
object and by ``<dir>/.write.lock`` between processes. A write commits to the database first, then applies the
change to the index under the write side of a readers-writer lock (rebuilds build a new index aside and swap
it), so a reader never sees a half-applied write. A process whose database was changed by another process
(``data_version`` moved) resynchronises its index before its next write.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from indexer import consistency as cons
from indexer import uploads
from indexer.db import default_url, is_default_url, safe_url
from indexer.embedder import Embedder
from indexer.errors import CollectionError, ConsistencyError
from indexer.faiss_index import INDEX_FILE, VECTORS_FILE, resolve_options
from indexer.locks import RWLock, directory_lock
from indexer.manifest import MANIFEST_FILE, CheckpointRef, IndexSpec, Manifest, now_iso
from indexer.milvus_store import POINTER_FILE
from indexer.pipeline import DEFAULT_MAX_PIXELS, BuildReport, run_pipeline
from indexer.records import AddReport, Hit, ImageRecord, NewImage, VerifyReport
from indexer.search import Filters, filtered_search, reranked_search
from indexer.sources import Source, from_new_images
from indexer.store import MetadataStore
from indexer.vector_store import BackendConfig, FaissStore, VectorStore, index_spec, load_store, new_store, stale_files
from models import read_checkpoint_meta
from models.atomic import remove_stale_temps
from training.evaluation.rerank import RerankConfig

logger = logging.getLogger(__name__)

SAVE_INTERVAL_S = 30.0


class Collection:
    """Use :meth:`create` or :meth:`open`; ``close()`` (or ``with``) saves pending index changes."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        store: MetadataStore,
        embedder: Embedder,
        index: VectorStore,
        backend_config: BackendConfig | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.store = store
        self.embedder = embedder
        self._index = index
        self.backend_config = backend_config or BackendConfig()
        self._retired: list[VectorStore] = []  # replaced by a rebuild; discarded once the new index is saved
        self._rw = RWLock()
        self._write_mutex = threading.RLock()
        self._dirty = False
        self._last_save = time.monotonic()
        # Seconds between index saves during long writes: rows committed since are caught up from the database.
        self.save_interval_s = SAVE_INTERVAL_S
        self.problems: list[str] = []  # consistency problems found by a non-strict open

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        directory: str | Path,
        checkpoint: str | Path,
        database_url: str | None = None,
        index_type: str = "flat",
        index_options: dict[str, Any] | None = None,
        device: str = "auto",
        runtime: str = "torch",
        backend: str = "faiss",
        backend_config: BackendConfig | None = None,
    ) -> Collection:
        """``backend``: ``faiss`` (index file in the folder) or ``milvus`` (``backend_config.milvus_uri``, default
        ``milvus.db`` in the folder); see :mod:`indexer.vector_store`."""
        directory = Path(directory)
        if Manifest.exists(directory):
            raise CollectionError(f"{directory} is already a collection; open it (or `msir-index add`) instead")
        options = resolve_options(index_type, index_options)
        spec = index_spec(index_type, options, backend, backend_config, directory)
        directory.mkdir(parents=True, exist_ok=True)
        embedder = Embedder(checkpoint, device, runtime)
        url = database_url or default_url(directory)
        store = MetadataStore(url)
        try:
            store.migrate()
            with directory_lock(directory):
                info = store.info()
                if info.get("collection_id") is None:
                    info = {
                        "collection_id": uuid.uuid4().hex,
                        "checkpoint_sha256": embedder.checkpoint_sha256,
                        "model_name": embedder.meta.model_name,
                        "embedding_dim": embedder.dim,
                        "created_at": now_iso(),
                    }
                    store.set_info(info)
                elif info.get("checkpoint_sha256") != embedder.checkpoint_sha256:
                    raise ConsistencyError(
                        f"database {store.display_url} already holds collection {info['collection_id']} built "
                        f"with another checkpoint; use an empty database (or another schema) for a new collection"
                    )
                else:  # a create interrupted before its manifest was written: adopt what the database holds
                    logger.warning(
                        "database %s already holds collection %s; adopted", store.display_url, info["collection_id"]
                    )
                index = new_store(spec, embedder.dim, directory=directory, collection_id=info["collection_id"],
                                  records=store.get_many, device=cls._index_device(embedder),
                                  config=backend_config)  # fmt: skip
                for ids, vectors in store.iter_embeddings():
                    index.add(ids, vectors, train=False)
                index.maybe_train()
                ref = CheckpointRef(
                    path=str(embedder.checkpoint_path.resolve()),
                    sha256=embedder.checkpoint_sha256,
                    model_name=embedder.meta.model_name,
                )
                database = None if is_default_url(url, directory) else safe_url(url)
                manifest = Manifest.new(info["collection_id"], ref, embedder.dim, index_type, options, database,
                                        backend=spec.backend, uri=spec.uri)  # fmt: skip
                col = cls(directory, manifest, store, embedder, index, backend_config)
                col.store.data_version = store.read_data_version()
                col._save()
        except BaseException:
            if "index" in locals():
                index.close()
            store.close()
            raise
        logger.info("created collection %s (%s index, db %s)", directory, index_type, store.display_url)
        return col

    @classmethod
    def open(
        cls,
        directory: str | Path,
        checkpoint: str | Path | None = None,
        database_url: str | None = None,
        device: str = "auto",
        *,
        strict: bool = True,
        runtime: str = "torch",
        backend_config: BackendConfig | None = None,
    ) -> Collection:
        """Open a collection. ``strict=False`` (used by ``verify``/``rebuild``) records consistency problems in
        ``col.problems`` instead of raising :class:`ConsistencyError`. ``runtime``: torch or onnx (the checkpoint's
        ONNX export, see :class:`indexer.embedder.Embedder`)."""
        directory = Path(directory)
        manifest = Manifest.load(directory)
        if checkpoint is None:
            checkpoint = manifest.checkpoint.path
            if not Path(checkpoint).with_suffix(".json").is_file():
                raise CollectionError(
                    f"checkpoint {checkpoint} recorded in {directory}/manifest.json not found; pass the moved "
                    f"checkpoint explicitly (--checkpoint)"
                )
        meta = read_checkpoint_meta(checkpoint)
        if strict and meta.weights_sha256 != manifest.checkpoint.sha256:
            raise ConsistencyError(
                f"checkpoint mismatch: {directory} was built with {manifest.checkpoint.path} (weights sha256 "
                f"{manifest.checkpoint.sha256[:12]}…), got {checkpoint} ({meta.weights_sha256[:12]}…); open it "
                f"with the original checkpoint, or build a new collection for the new one"
            )
        url = database_url or manifest.database or default_url(directory)
        store = MetadataStore(url)
        try:
            store.migrate()
            embedder = Embedder(checkpoint, device, runtime)
            info = store.info()
            problems = cons.identity_problems(manifest, info, embedder, None)
            try:
                index = load_store(manifest.index, manifest.embedding_dim, directory=directory,
                                   collection_id=manifest.collection_id, records=store.get_many,
                                   device=cls._index_device(embedder), config=backend_config)  # fmt: skip
            except CollectionError as error:
                if strict:
                    raise
                problems.append(f"index unreadable: {error}")
                # An empty in-memory placeholder (never saved): `rebuild` replaces it with the real backend's.
                index = FaissStore(manifest.index.type, manifest.embedding_dim, manifest.index.params)
            col = cls(directory, manifest, store, embedder, index, backend_config)
            col.store.data_version = store.read_data_version()
            if not problems:
                problems = col._catch_up()
            col.problems = problems
            if problems and strict:
                raise ConsistencyError(
                    f"{directory}: " + "; ".join(problems) + "; " + cons.REBUILD_HINT.format(dir=directory)
                )
        except BaseException:
            if "index" in locals():
                index.close()
            store.close()
            raise
        return col

    def _catch_up(self) -> list[str]:
        """Add lagging rows from the database; returns drift problems (not repaired here)."""
        with self._write_lock():
            # Under the lock: a live writer's temp file is never taken for a killed one's.
            for name in (INDEX_FILE, VECTORS_FILE, MANIFEST_FILE, POINTER_FILE):
                remove_stale_temps(self.directory, name)
            diff = cons.diff_ids(self.store.ids(), self._index.ids())
            if diff.drifted:
                return cons.drift_problems(diff)
            if len(diff.lagging):
                msg = "%s: index lags the database by %d row(s) (interrupted build?); adding their stored embeddings"
                logger.warning(msg, self.directory, len(diff.lagging))
                for ids, vectors in self.store.iter_embeddings(ids=diff.lagging.tolist()):
                    with self._rw.write():
                        self._index.add(ids, vectors, train=False)
                with self._rw.write():
                    self._index.maybe_train()
                self._dirty = True
                self._save()
        return []

    @staticmethod
    def _index_device(embedder: Embedder) -> str:
        return "cuda" if embedder.device.type == "cuda" else "cpu"

    def _store_device(self) -> str:
        # FAISS keeps the device its index has (a placeholder after an unreadable index: cpu).
        return self._index.device if self._index.device in ("cpu", "cuda") else self._index_device(self.embedder)

    def close(self) -> None:
        """Save pending index changes and release the database connections."""
        try:
            if self._dirty:
                with self._write_lock():
                    self._save()
        finally:
            for index in (*self._retired, self._index):
                index.close()
            self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- persistence --------------------------------------------------------------------------------------------
    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        with self._write_mutex, directory_lock(self.directory):
            yield

    def _save(self) -> None:
        """Index files first, then the manifest (callers hold the write lock)."""
        with self._rw.read():
            self._index.save(self.directory)
            self.manifest.row_count = self._index.ntotal
            self.manifest.save(self.directory)
        if self._index.index_type != "ivfpq":  # left over from an ivfpq index this collection switched from
            (self.directory / VECTORS_FILE).unlink(missing_ok=True)
        for name in stale_files(self._index.backend):  # left over from the backend this collection switched from
            (self.directory / name).unlink(missing_ok=True)
        while self._retired:  # the saved files no longer name what a rebuild replaced
            self._retired.pop().discard()
        self._dirty = False
        self._last_save = time.monotonic()

    def _maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= self.save_interval_s:
            self._save()

    def _sync(self) -> None:
        """Before a write: if another process changed the database, bring the index in line with it."""
        version = self.store.read_data_version()
        if version == self.store.data_version:
            return
        diff = cons.diff_ids(self.store.ids(), self._index.ids())
        logger.info("%s: database changed by another process; syncing the index", self.directory)
        add = np.concatenate([diff.lagging, diff.orphans])
        if len(diff.missing) and not self._index.supports_remove:
            self._swap(self._build_from_db())
        else:
            with self._rw.write():
                self._index.remove(diff.missing)
            for ids, vectors in self.store.iter_embeddings(ids=add.tolist()):
                with self._rw.write():
                    self._index.add(ids, vectors, train=False)
        self.store.data_version = version
        self._dirty = True

    # -- writes -------------------------------------------------------------------------------------------------
    def existing_uris(self, uris: Sequence[str]) -> dict[str, int]:  # pipeline Sink
        return self.store.existing_uris(uris)

    def commit(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> tuple[list[int | None], dict[int, int]]:
        """Pipeline Sink: one transaction for the batch, then the index; periodic saves."""
        with self._write_lock():
            self._sync()
            ids, duplicate_of = self.store.insert_new(rows)
            keep = [i for i, new_id in enumerate(ids) if new_id is not None]
            if keep:
                with self._rw.write():
                    self._index.add(np.asarray([ids[i] for i in keep], np.int64), vectors[keep], train=False)
                self._dirty = True
            self._maybe_save()
        return ids, duplicate_of

    def add_source(
        self,
        source: Source,
        *,
        batch_size: int = 256,
        workers: int = 0,
        progress: bool = False,
        report: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> BuildReport:
        """Index a :class:`~indexer.sources.Source` (what the CLI's build/add use); saves at the end."""
        reports = self.directory / "reports" if report else None
        result = run_pipeline(
            source, self.embedder, self, batch_size=batch_size, workers=workers, progress=progress,
            report_dir=reports, max_pixels=max_pixels,
        )  # fmt: skip
        with self._write_lock():
            with self._rw.write():  # ivfpq: train once, at the end of a bulk load, on every vector
                self._dirty |= self._index.maybe_train()
            if self._dirty:
                self._save()
        return result

    def add_images(self, items: Iterable[NewImage]) -> AddReport:
        result = self.add_source(from_new_images(items), report=False)
        report = AddReport(
            added=result.added,
            duplicates=result.already_present + result.duplicates,
            failed=result.listing_skipped + result.failed,
        )
        # An upload that was not indexed (same content already stored, or undecodable) must not stay on disk.
        uploads.discard_unreferenced(
            self.directory, self.store, [uri for uri, _ in report.duplicates] + [src for src, _ in report.failed]
        )
        return report

    def store_upload(self, data: bytes, suffix: str) -> Path:
        """Write uploaded bytes to ``uploads/<sha256[:2]>/<sha256><suffix>`` (content-addressed, no user path)."""
        return uploads.store_upload(self.directory, data, suffix)

    def remove(self, ids: Iterable[int]) -> int:
        """Delete rows and their vectors; returns how many existed. HNSW: the index is rebuilt from the DB."""
        wanted = sorted({int(i) for i in ids})
        with self._write_lock():
            self._sync()
            files = [r.path for r in self.store.get_many(wanted).values() if r.path is not None]
            gone = self.store.delete(wanted)
            if not gone:
                return 0
            uploads.discard_unreferenced(self.directory, self.store, files)
            if self._index.supports_remove:
                with self._rw.write():
                    self._index.remove(np.asarray(gone, np.int64))
            else:
                self._swap(self._build_from_db())
            # Saved now: an index still holding deleted ids would be refused on the next open.
            self._save()
        return len(gone)

    def remove_paths(self, paths: Iterable[str | Path]) -> int:
        """Remove the rows whose path or uri is one of ``paths``."""
        names = [str(Path(p).resolve()) for p in paths] + [str(p) for p in paths]
        return self.remove(self.store.ids_for_paths(names))

    def rebuild(self) -> None:
        """Rebuild the index from the embeddings stored in the database (no image is decoded); ivfpq retrains."""
        with self._write_lock():
            self._swap(self._build_from_db())
            # The database is the truth: a manifest paired with it by mistake takes its collection id.
            self.manifest.collection_id = self.store.info().get("collection_id", self.manifest.collection_id)
            self.store.data_version = self.store.read_data_version()
            self._save()
            self.problems = []
        logger.info(
            "%s: rebuilt the %s index from the %d stored embeddings", self.directory, self.index_type, self.ntotal
        )

    def set_index_type(
        self, index_type: str, options: dict[str, Any] | None = None, *, backend: str | None = None
    ) -> None:
        """Switch index type/options (and backend: ``backend_config.milvus_uri`` is recorded for milvus); takes
        effect at the next :meth:`rebuild` (which saves it)."""
        resolved = resolve_options(index_type, options)
        if backend is None or backend == self.manifest.index.backend:
            spec = IndexSpec(type=index_type, params=resolved, backend=self.manifest.index.backend,
                             uri=self.manifest.index.uri)  # fmt: skip
        else:
            spec = index_spec(index_type, resolved, backend, self.backend_config, self.directory)
        with self._write_lock():
            self.manifest.index = spec

    def _build_from_db(self) -> VectorStore:
        fresh = new_store(self.manifest.index, self.manifest.embedding_dim, directory=self.directory,
                          collection_id=self.manifest.collection_id, records=self.store.get_many,
                          device=self._store_device(), config=self.backend_config)  # fmt: skip
        for ids, vectors in self.store.iter_embeddings():
            fresh.add(ids, vectors, train=False)
        fresh.maybe_train()
        return fresh

    def _swap(self, index: VectorStore) -> None:
        with self._rw.write():
            old, self._index = self._index, index
        self._retired.append(old)
        self._dirty = True

    # -- reads --------------------------------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        labels: list[str] | None = None,
        split: str | None = None,
        exclude_ids: set[int] | None = None,
        exclude_sha256: set[str] | None = None,
        rerank: RerankConfig | None = None,
    ) -> list[list[Hit]]:
        """k nearest images per query (cosine similarity), best first; filters as in :mod:`indexer.search`
        (``labels`` keeps images having any of them); ``rerank`` as in :func:`indexer.search.reranked_search`."""
        if k < 1:
            raise CollectionError(f"k must be >= 1, got {k}")
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.manifest.embedding_dim:
            raise CollectionError(f"queries must be [Q, {self.manifest.embedding_dim}], got {list(q.shape)}")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        filters = Filters(
            labels=frozenset(labels) if labels else None,
            split=split,
            exclude_ids=frozenset(int(i) for i in exclude_ids or ()),
            exclude_sha256=frozenset(exclude_sha256 or ()),
        )

        def search_index(batch: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray, int]:
            with self._rw.read():
                total = self._index.ntotal
                # Filters are passed down: a backend that applies them (Milvus) needs no over-fetching.
                scores, ids = self._index.search(batch, min(fetch, max(total, 1)), filters)
            return scores, ids, total

        pushdown = self._index.filters_pushed_down
        if rerank is not None and rerank.active:

            def search_all(batch: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray, int]:
                with self._rw.read():  # unfiltered: the neighbours re-ranking averages describe the vectors
                    total = self._index.ntotal
                    scores, ids = self._index.search(batch, min(fetch, max(total, 1)), None)
                return scores, ids, total

            return reranked_search(
                search_index, search_all, self._reconstruct, self.store.get_many, q, k, filters, rerank, pushdown
            )
        return filtered_search(search_index, self.store.get_many, q, k, filters, pushdown=pushdown)

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        with self._rw.read():
            return self._index.reconstruct(ids)

    def get(self, id: int) -> ImageRecord | None:
        return self.store.get_many([id]).get(int(id))

    def get_many(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        return self.store.get_many(ids)

    def list_images(
        self,
        *,
        after: int | None = None,
        limit: int = 50,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> tuple[list[ImageRecord], int]:
        """One page of the stored images in id order (keyset pagination on ``after``) and the matching total."""
        return self.store.page(after=after, limit=limit, labels=labels, split=split)

    def vector(self, id: int) -> np.ndarray | None:
        return self.store.vectors([id]).get(int(id))

    def ping(self) -> None:
        self.store.ping()

    @property
    def index_type(self) -> str:
        return self._index.index_type

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    def verify(self) -> VerifyReport:
        """Database <-> index <-> manifest, checkpoint and dimension; pending index changes are saved first."""
        with self._write_lock():
            if self._dirty and not self.problems:
                self._save()
            saved = not self._dirty
            info = self.store.info()
            with self._rw.read():
                problems = [p for p in self.problems if p.startswith("index unreadable")]
                problems += cons.identity_problems(self.manifest, info, self.embedder, self._index)
                diff = cons.diff_ids(self.store.ids(), self._index.ids())
                problems += cons.drift_problems(diff)
                if len(diff.lagging):
                    problems.append(f"lagging rows: {len(diff.lagging)} database row(s) not in the index yet")
                problems += cons.deep_problems(self.store, self._index, self.manifest, saved)
        details = {
            "rows": int(self.store.count()),
            "vectors": self._index.ntotal,
            "orphan_rows": [int(i) for i in diff.orphans[:1000]],
            "missing_rows": [int(i) for i in diff.missing[:1000]],
            "lagging_rows": len(diff.lagging),
        }
        return VerifyReport(ok=not problems, problems=problems, details=details)

    def stats(self) -> dict[str, Any]:
        summary = self.store.summary()
        files = {
            name: (self.directory / name).stat().st_size
            for name in (INDEX_FILE, VECTORS_FILE, "manifest.json", "metadata.db")
            if (self.directory / name).is_file()
        }
        with self._rw.read():
            index = self._index.describe()
        return {
            "directory": str(self.directory),
            "collection_id": self.manifest.collection_id,
            "database": self.store.display_url,
            "rows": self.store.count(),
            "index": index,
            "embedding_dim": self.manifest.embedding_dim,
            "metric": self.manifest.metric,
            "checkpoint": self.manifest.checkpoint.model_dump(),
            "class_names": self.embedder.class_names,
            "multi_label": self.embedder.multi_label,
            "created_at": self.manifest.created_at,
            "updated_at": self.manifest.updated_at,
            "unsaved_changes": self._dirty,
            "file_bytes": files,
            **summary,
        }
