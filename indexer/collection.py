"""``Collection``: a folder (``manifest.json`` + ``index.faiss`` + ``uploads/``) and a metadata database.

The database is the source of truth, embeddings included; the FAISS index is a copy that is saved atomically,
caught up from the database when it lags (a killed build) and rebuilt from it on demand.

Concurrency (many processes around one database): writes are serialised by a lock in the object and by
``<dir>/.write.lock`` between processes; each commits its rows and change-feed entries in one transaction, then
applies the change to this process's index under the write side of a readers-writer lock, so a reader never sees a
half-applied write. How the index follows other processes' writes and rebuilds: :mod:`indexer.following.feed`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from indexer import consistency as cons
from indexer import row_paths, verification
from indexer import stats as collection_stats
from indexer import upload_files as uploads
from indexer.embedder import Embedder
from indexer.errors import CheckpointMismatch, CollectionError, ConsistencyError
from indexer.following.feed import FollowingIndex, fill_from_db
from indexer.ingest import relabel
from indexer.ingest.pipeline import DEFAULT_MAX_PIXELS, BuildReport, run_pipeline
from indexer.ingest.sources import Source, WorkItem, from_new_images
from indexer.locks import directory_lock
from indexer.manifest import CheckpointRef, IndexSpec, Manifest, now_iso
from indexer.metadata.queries import SCAN_BATCH, MetadataStore
from indexer.metadata.tables import default_url, is_default_url, safe_url
from indexer.records import AddReport, Hit, ImageRecord, NewImage, Upload, VerifyReport
from indexer.row_cache import RowCache
from indexer.search import Filters, filtered_search, reranked_search, unit_queries
from indexer.vectors.backends import BackendConfig, VectorStore, index_spec, load_store, new_store
from indexer.vectors.faiss_index import resolve_options
from indexer.vectors.faiss_store import FaissStore
from models import read_checkpoint_meta
from msir_core.retrieval.rerank import RerankConfig

logger = logging.getLogger(__name__)

# Filters whose allowed ids (8 bytes per passing row each) or counts a collection keeps.
ALLOWED_CACHE_SIZE = 16
T = TypeVar("T")


def _add_report(result: BuildReport) -> AddReport:
    """An add's outcome as the service reports it: rows already stored count as duplicates, unlisted as failed."""
    return AddReport(
        added=result.added,
        duplicates=result.already_present + result.duplicates,
        failed=result.listing_skipped + result.failed,
    )


class Collection(FollowingIndex):
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
        super().__init__(directory, manifest, store, index, backend_config)
        self.embedder = embedder
        self._staged: dict[str, tuple[Path, Path]] = {}  # uri -> (pending, final) of uploads being added
        self.problems: list[str] = []  # consistency problems found by a non-strict open
        # (what, labels, split, feed head) -> ids passing that filter, or their count (see _by_feed_head)
        self._allowed_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._allowed_lock = threading.Lock()
        self._rows = RowCache(store.get_many)

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
        progress: bool = False,
        scan_batch: int = SCAN_BATCH,
    ) -> Collection:
        """``backend``: ``faiss`` (index file in the folder) or ``milvus`` (``backend_config.milvus_uri``, default
        ``milvus.db`` in the folder); see :mod:`indexer.vectors.backends`. ``progress``: a bar while the index is
        filled from rows already in the database (a sharded build's), read ``scan_batch`` rows a fetch."""
        directory = Path(directory)
        if Manifest.exists(directory):
            raise CollectionError(f"{directory} is already a collection; open it (or `msir-index add`) instead")
        options = resolve_options(index_type, index_options)
        spec = index_spec(index_type, options, backend, backend_config, directory)
        directory.mkdir(parents=True, exist_ok=True)
        embedder = Embedder(checkpoint, device, runtime, onnx_cache_dir=directory)
        url = database_url or default_url(directory)
        store = MetadataStore(url)
        try:
            store.migrate(directory)
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
                head = store.head()
                fill_from_db(store, index, batch=scan_batch, progress=progress)
                ref = CheckpointRef(
                    path=str(embedder.checkpoint_path.resolve()),
                    sha256=embedder.checkpoint_sha256,
                    model_name=embedder.meta.model_name,
                )
                database = None if is_default_url(url, directory) else safe_url(url)
                manifest = Manifest.new(info["collection_id"], ref, embedder.dim, index_type, options, database,
                                        backend=spec.backend, uri=spec.uri)  # fmt: skip
                generation, _ = store.generation()
                manifest.generation = generation + 1
                manifest.seq = head
                col = cls(directory, manifest, store, embedder, index, backend_config)
                col.scan_batch = scan_batch
                col._publish_generation(head)
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
        catch_up: bool = True,
    ) -> Collection:
        """Open a collection. ``strict=False`` (used by ``verify``/``rebuild``) records consistency problems in
        ``col.problems`` instead of raising :class:`ConsistencyError`; ``catch_up=False`` (``verify``) leaves the
        index as saved, so a lagging index file is reported rather than silently caught up. ``runtime``: auto, torch or
        onnx (the checkpoint's ONNX export, see :class:`indexer.embedder.Embedder`)."""
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
            raise CheckpointMismatch(
                f"checkpoint mismatch: {directory} was built with {manifest.checkpoint.path} (weights sha256 "
                f"{manifest.checkpoint.sha256[:12]}…), got {checkpoint} ({meta.weights_sha256[:12]}…); open it "
                f"with the original checkpoint, or build a new collection for the new one"
            )
        url = database_url or manifest.database or default_url(directory)
        store = MetadataStore(url)
        try:
            store.migrate(directory)
            embedder = Embedder(checkpoint, device, runtime, onnx_cache_dir=directory)
            info = store.info()
            problems = cons.identity_problems(manifest, info, embedder, None)
            try:
                # Under the directory lock: the index files and the manifest describing them are read as one set.
                with directory_lock(directory):
                    manifest = Manifest.load(directory)
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
            if not problems and catch_up:
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

    @staticmethod
    def _index_device(embedder: Embedder) -> str:
        return "cuda" if embedder.device.type == "cuda" else "cpu"

    def _store_device(self) -> str:
        # FAISS keeps the device its index has (a placeholder after an unreadable index: cpu).
        return self._index.device if self._index.device in ("cpu", "cuda") else self._index_device(self.embedder)

    def close(self) -> None:
        """Stop following, save pending index changes and release the database connections."""
        self.stop_following()
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

    # -- writes -------------------------------------------------------------------------------------------------
    def existing_uris(self, uris: Sequence[str]) -> dict[str, int]:  # pipeline Sink
        return self.store.existing_uris(uris)

    def commit(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> tuple[list[int | None], dict[int, int]]:
        """Pipeline Sink: one transaction for the batch, then the index; periodic saves."""
        for row in rows:  # a file inside the collection is stored relative to it (copies and moves keep working)
            if row["path"] is not None:
                row["path"] = row_paths.to_stored(self.directory, row["path"])
        with self._write_lock():
            self._follow()
            ids, duplicate_of = self.store.insert_new(rows)
            keep = [i for i, new_id in enumerate(ids) if new_id is not None]
            for i in keep:  # committed: an upload written aside moves into place now
                staged = self._staged.get(rows[i]["uri"])
                if staged is not None:
                    uploads.settle(*staged)
            if keep:
                with self._rw.write():
                    self._index.add(np.asarray([ids[i] for i in keep], np.int64), vectors[keep], train=False)
                self._dirty = True
                self._advance(self.store.last_feed)
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
        """Index a :class:`~indexer.ingest.sources.Source` (what the CLI's build/add use); saves at the end."""
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
        result.note = source.note
        result.labelled = relabel.label_unlabelled(self.store, source, result)
        return result

    def add_images(self, items: Iterable[NewImage]) -> AddReport:
        report = _add_report(self.add_source(from_new_images(items), report=False))
        # An upload that was not indexed (same content already stored, or undecodable) must not stay on disk.
        uploads.discard_unreferenced(
            self.directory, self.store, [uri for uri, _ in report.duplicates] + [src for src, _ in report.failed]
        )
        return report

    def add_uploads(self, items: Sequence[Upload]) -> AddReport:
        """Store and index uploaded bytes. Each file is written aside, moved to ``uploads/`` once its row is
        committed and removed otherwise (a duplicate, undecodable bytes, a database outage): no file without a
        row. Results are reported by the file's path relative to the collection, ``uploads/<xx>/<name>`` (its uri)."""
        staged = [uploads.stage(self.directory, item.data, item.suffix) for item in items]
        work = [
            WorkItem(
                uri=row_paths.to_stored(self.directory, final),
                path=row_paths.to_stored(self.directory, final),
                labels=tuple(item.labels),
                split=item.split,
                source="upload",
                metadata=dict(item.metadata),
                read_path=str(pending),
            )
            for item, (pending, final) in zip(items, staged, strict=True)
        ]
        mine = {w.uri: pair for w, pair in zip(work, staged, strict=True)}
        with self._write_mutex:  # commit() reads the map; concurrent uploads each add their own entries
            self._staged.update(mine)
        try:
            result = self.add_source(Source("uploads", work), report=False)
        finally:
            with self._write_mutex:
                for uri, pair in mine.items():
                    if self._staged.get(uri) is pair:
                        del self._staged[uri]
            for pending, _ in staged:  # not moved in: not committed
                pending.unlink(missing_ok=True)
        return _add_report(result)

    def store_upload(self, data: bytes, suffix: str) -> Path:
        """Write uploaded bytes to ``uploads/<sha256[:2]>/<sha256><suffix>`` (content-addressed, no user path)."""
        return uploads.store_upload(self.directory, data, suffix)

    def remove(self, ids: Iterable[int]) -> int:
        """Delete rows and their vectors; returns how many existed. HNSW: the index is rebuilt from the DB."""
        wanted = sorted({int(i) for i in ids})
        with self._write_lock():
            self._follow()
            records = self.store.get_many(wanted)
            gone = self.store.delete(wanted)
            if not gone:
                return 0
            uploads.discard_deleted(self.directory, [records[i] for i in gone if i in records])
            if self._index.supports_remove:
                with self._rw.write():
                    self._index.remove(np.asarray(gone, np.int64))
                self._advance(self.store.last_feed)
            else:
                self._swap(self._build_from_db())
            # Saved now: an index still holding deleted ids would be refused on the next open.
            self._save()
        return len(gone)

    def edit(
        self,
        ids: Iterable[int],
        *,
        labels: list[str] | None = None,
        add_labels: Sequence[str] = (),
        remove_labels: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        replace_metadata: bool = False,
    ) -> list[int]:
        """Relabel / edit metadata of stored images without re-embedding (see :meth:`MetadataStore.edit`); the
        index is untouched, followers see an ``update`` change. Returns the ids that exist."""
        changed = self.store.edit(
            ids,
            labels=labels,
            add_labels=add_labels,
            remove_labels=remove_labels,
            metadata=metadata,
            replace_metadata=replace_metadata,
        )
        if changed:  # a store that keeps labels for its own filters (Milvus) takes the new ones
            with self._rw.write():
                self._index.refresh(np.asarray(changed, np.int64))
        return changed

    def ids_for_paths(self, paths: Iterable[str | Path]) -> list[int]:
        """Ids of the rows whose path or uri is one of ``paths`` (as given, absolute, or as stored: relative to the
        collection for a file inside it)."""
        names: list[str] = []
        for p in paths:
            absolute = Path(p).resolve()
            names += [str(p), str(absolute), row_paths.to_stored(self.directory, absolute)]
        return self.store.ids_for_paths(names)

    def remove_paths(self, paths: Iterable[str | Path]) -> int:
        """Remove the rows whose path or uri is one of ``paths``."""
        return self.remove(self.ids_for_paths(list(paths)))

    def rebuild(self, *, progress: bool = False) -> None:
        """Rebuild the index from the embeddings stored in the database (no image is decoded), streamed
        :attr:`scan_batch` rows at a time; ivfpq retrains."""
        with self._write_lock():
            head = self.store.head()
            self._swap(self._build_from_db(progress=progress))
            # The database is the truth: a manifest paired with it by mistake takes its collection id.
            self.manifest.collection_id = self.store.info().get("collection_id", self.manifest.collection_id)
            published, _ = self.store.generation()
            disk = Manifest.peek(self.directory)
            on_disk = disk.generation if disk is not None else 0
            # A new generation, above any this collection had: followers adopt it, no save can revert it.
            self.manifest.generation = max(published, on_disk, self.manifest.generation) + 1
            self.seq = head
            self._save()  # files before the database: a follower told of the generation finds its files
            self._publish_generation(head)
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
        q = unit_queries(queries, self.manifest.embedding_dim)
        filters = Filters(
            labels=frozenset(labels) if labels else None,
            split=split,
            exclude_ids=frozenset(int(i) for i in exclude_ids or ()),
            exclude_sha256=frozenset(exclude_sha256 or ()),
        )
        # Where the rows served from the row cache stand (indexer.row_cache). Followed, this copy knows the feed's
        # head as of its last check, within the sync interval, as the index itself does: the rows' tag is that head
        # and this process's own deletes and edits, so a search costs no SQL when its neighbours are cached. Not
        # followed (a CLI, a test) or not confirmed lately (the database down: a search answers as the database
        # does), the head is read now.
        tag, head = self._row_tag()
        pushdown = self._index.filters_pushed_down
        unapplied = 0
        if not pushdown and (filters.labels or filters.split is not None):
            # FAISS: the database resolves the label/split filter to ids, the index searches only those (and
            # leaves out exclude_ids); excluded hashes are dropped here, so that many more are asked for.
            filters = replace(filters, allowed=self._allowed_ids(filters.labels, filters.split, head))
            pushdown, unapplied = True, len(filters.exclude_sha256)

        def rows(ids: Iterable[int]) -> dict[int, ImageRecord]:
            return self._rows.get_many(ids, tag)

        def search_index(batch: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray, int]:
            with self._rw.read():
                total = self._index.ntotal
                # Filters are passed down: a backend that applies them (Milvus) needs no over-fetching.
                scores, ids = self._index.search(batch, min(fetch, max(total, 1)), filters)
            return scores, ids, total

        if rerank is not None and rerank.active:

            def search_all(batch: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray, int]:
                with self._rw.read():  # unfiltered: the neighbours re-ranking averages describe the vectors
                    total = self._index.ntotal
                    scores, ids = self._index.search(batch, min(fetch, max(total, 1)), None)
                return scores, ids, total

            return reranked_search(
                search_index, search_all, self._reconstruct, rows, q, k, filters, rerank, pushdown, unapplied
            )
        return filtered_search(search_index, rows, q, k, filters, pushdown=pushdown, unapplied=unapplied)

    def _row_tag(self) -> tuple[tuple[int | None, int], int | None]:
        """The rows' cache tag for a search starting now, and the feed head when it had to be read (not followed)."""
        confirmed = self.confirmed_head()
        head = self.store.head() if confirmed is None else None
        return (confirmed if head is None else head, self.store.row_writes), head

    def warm_rows(self, page: int = 1000) -> int:
        """Read rows into the rows' cache, in id order, up to its capacity, and say how many: a collection that fits
        answers its first searches without reading rows back, and a larger one has its row query prepared."""
        tag, _ = self._row_tag()
        kept, after = 0, None
        while kept < self._rows.capacity:
            rows = self.store.page_rows(after=after, limit=min(page, self._rows.capacity - kept))
            if not rows:
                break
            self._rows.prefill({r.id: r for r in rows}, tag)
            kept, after = kept + len(rows), rows[-1].id
        return kept

    def _allowed_ids(self, labels: frozenset[str] | None, split: str | None, head: int | None = None) -> np.ndarray:
        """Ids passing a label/split filter, cached per filter until the change feed moves (every insert, delete
        and label/split edit appends a change, so the feed's head identifies the rows' state). Repeated queries
        with one filter then cost one indexed ``max(seq)`` lookup, not a scan of the rows that pass."""
        return self._by_feed_head(
            ("allowed", labels, split), lambda: self.store.allowed_ids(sorted(labels) if labels else None, split), head
        )

    def _by_feed_head(self, key: tuple[Any, ...], compute: Callable[[], T], head: int | None = None) -> T:
        """``compute()``, cached under ``key`` until the change feed's head (``head``, read now when None) moves (LRU
        of ALLOWED_CACHE_SIZE)."""
        full = (*key, self.store.head() if head is None else head)
        with self._allowed_lock:
            if full in self._allowed_cache:
                self._allowed_cache.move_to_end(full)
                return self._allowed_cache[full]  # type: ignore[no-any-return]
        found = compute()
        with self._allowed_lock:
            self._allowed_cache[full] = found
            while len(self._allowed_cache) > ALLOWED_CACHE_SIZE:
                self._allowed_cache.popitem(last=False)
        return found

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
        """One page of the stored images in id order (keyset pagination on ``after``) and the matching total.

        The page is an index range scan; the total is a count over the table, cached per filter until the change
        feed moves, so paging through a large collection does not count it again for every page."""
        rows = self.store.page_rows(after=after, limit=limit, labels=labels, split=split)
        label_key = frozenset(labels) if labels else None
        return rows, self._by_feed_head(
            ("count", label_key, split), lambda: self.store.count_matching(sorted(label_key or ()) or None, split)
        )

    def vector(self, id: int) -> np.ndarray | None:
        return self.store.vectors([id]).get(int(id))

    def ping(self) -> None:
        self.store.ping()

    def verify(self, sample: int | None = None) -> VerifyReport:
        """Database <-> index <-> manifest <-> files (:mod:`indexer.verification`); pending changes saved first.
        ``sample``: check about that many rows instead of every one (for huge collections)."""
        return verification.verify(self, sample)

    def repair(self) -> list[str]:
        """Catch the index up (or rebuild it on drift), settle or delete orphan files; returns what was done."""
        return verification.repair(self)

    def stats(self) -> dict[str, Any]:
        """Rows, index, model, files and sync position (:func:`indexer.stats.stats`)."""
        return collection_stats.stats(self)
