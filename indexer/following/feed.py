"""The index copy a process holds, and how it follows the database: persistence, the change feed, generations.

:class:`FollowingIndex` is the part of :class:`indexer.Collection` that keeps one in-memory vector index in line with
the metadata database (the truth) while other processes write to it:

* every write commits its rows and change-feed entries in one transaction (:mod:`indexer.metadata.queries`);
* :meth:`FollowingIndex.refresh` (a background thread in servers, :meth:`start_following`; the start of every
  write elsewhere) reads ``max(seq)`` and, when it moved, applies only the changes after this copy's ``seq``. They
  are applied as a net effect checked against the database (an id in the index but no longer stored is removed, an
  id stored but not in the index is added from its stored embedding), so a change is never applied twice (this
  process's own writes) and never missed;
* index files carry a generation (``manifest.json``): a rebuild, in any process, writes files of a new generation,
  then publishes it in the database; followers load those files aside and swap them in (or rebuild from the
  database with the published spec when the files are not on their host). :meth:`_save` never writes over files of
  a newer generation or a later feed position, so a stale process cannot revert a rebuild;
* the feed is bounded (:meth:`_maybe_prune` after a save keeps the newest ``feed_keep`` changes): a copy whose
  position is behind the pruned horizon loads the saved files when they are within the kept feed, or rebuilds
  from the database, then follows as usual.

The vector index is only used through ``add/remove/contains/ids/search/save/load``, ``supports_remove`` and
``maybe_train``: nothing here depends on FAISS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from indexer import consistency as cons
from indexer.errors import CollectionError
from indexer.locks import RWLock, directory_lock
from indexer.manifest import MANIFEST_FILE, Manifest
from indexer.metadata.queries import SCAN_BATCH, Change, MetadataStore
from indexer.vectors.backends import BackendConfig, VectorStore, load_store, new_store, stale_files
from indexer.vectors.faiss_index import DELETED_FILE, INDEX_FILE, VECTORS_FILE, resolve_options
from indexer.vectors.milvus_store import POINTER_FILE
from msir_core.atomic import remove_stale_temps
from msir_core.progress import progress_bar

logger = logging.getLogger(__name__)

SAVE_INTERVAL_S = 30.0
APPLY_BATCH = 1000  # followed rows added per write-lock hold: searches interleave with a long catch-up
FEED_PAGE = 50_000  # feed entries read at a time
# Changes the feed keeps (older ones are pruned once this is exceeded by a tenth, so the DELETE runs in batches,
# not per write). A copy further behind reloads the current index files (or rebuilds from the database).
FEED_KEEP = 100_000


def fill_from_db(store: MetadataStore, index: VectorStore, *, batch: int = SCAN_BATCH, progress: bool = False) -> None:
    """Every stored embedding into ``index``, streamed ``batch`` rows at a time (one server-side cursor), then one
    training pass: memory beyond the index holds one batch, whatever the row count."""
    with progress_bar(unit="vec", disable=not progress) as bar:
        task = bar.add_task("index from the database", total=store.count() if progress else None)
        for ids, vectors in store.iter_embeddings(batch=batch):
            index.add(ids, vectors, train=False)
            bar.advance(task, len(ids))
    index.maybe_train()


class FollowingIndex:
    """An index copy of one collection folder + database; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        store: MetadataStore,
        index: VectorStore,
        backend_config: BackendConfig | None = None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.store = store
        self._index = index
        self.backend_config = backend_config or BackendConfig()
        self._retired: list[VectorStore] = []  # replaced by a rebuild; discarded once the new index is saved
        self._rw = RWLock()
        self._write_mutex = threading.RLock()
        self._dir_depth = 0  # re-entrancy of the directory lock (flock is per open file, not per process)
        self.seq = manifest.seq  # change-feed position this index reflects (own writes may be ahead of it)
        self.head_seq = manifest.seq  # feed head at the last check
        self.last_check: float | None = None  # time.monotonic() of the last successful check
        self.sync_error: str | None = None
        self._follower: threading.Thread | None = None
        self.follow_interval_s = 0.0
        self._stop_following = threading.Event()
        self._dirty = False
        self._last_save = time.monotonic()
        # Seconds between index saves during long writes: rows committed since are caught up from the database.
        self.save_interval_s = SAVE_INTERVAL_S
        self.feed_keep = FEED_KEEP
        self.scan_batch = SCAN_BATCH  # rows per fetch when the index is built from the database

    @property
    def index_type(self) -> str:
        return self._index.index_type

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    def _catch_up(self) -> list[str]:
        """Bring the saved index up to the database: the change feed since its ``seq``, then rows older than the
        feed (an index saved before it existed, or a killed build's lagging rows). Returns drift problems (not
        repaired here)."""
        with self._write_lock():
            # Under the lock: a live writer's temp file is never taken for a killed one's.
            for name in (INDEX_FILE, VECTORS_FILE, DELETED_FILE, MANIFEST_FILE, POINTER_FILE):
                remove_stale_temps(self.directory, name)
            generation, _ = self.store.generation()
            if self.manifest.generation > generation:  # a rebuild died between its files and its database commit
                self._publish_generation(self.seq)
            before = self.ntotal
            self._follow()
            diff = cons.diff_ids(self.store.ids(), self._index.ids())
            if diff.drifted:
                return cons.drift_problems(diff)
            if len(diff.lagging):
                msg = "%s: index lags the database by %d row(s) (interrupted build?); adding their stored embeddings"
                logger.warning(msg, self.directory, len(diff.lagging))
                self._add_stored(diff.lagging.tolist())
            if self.ntotal != before or len(diff.lagging):
                self._dirty = True
                self._save()
        return []

    # -- persistence --------------------------------------------------------------------------------------------
    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        with self._write_mutex:
            if self._dir_depth:  # already held by this thread (flock would wait for ourselves)
                self._dir_depth += 1
                try:
                    yield
                finally:
                    self._dir_depth -= 1
                return
            with directory_lock(self.directory):
                self._dir_depth = 1
                try:
                    yield
                finally:
                    self._dir_depth = 0

    def _save(self) -> None:
        """Index files first, then the manifest (callers hold the write lock). Never over a newer index: when the
        files on disk are of a later generation or feed position, this copy is the stale one and is not saved."""
        self.manifest.seq = self.seq
        disk = Manifest.peek(self.directory)
        if disk is not None and disk.collection_id == self.manifest.collection_id and disk.is_newer_than(self.manifest):
            logger.info(
                "%s: not saving generation %d at seq %d: the files on disk are newer (generation %d, seq %d)",
                self.directory, self.manifest.generation, self.seq, disk.generation, disk.seq,
            )  # fmt: skip
            self._dirty = False
            return
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
        self._maybe_prune()

    def _maybe_prune(self) -> None:
        """Keep the change feed bounded: past ``feed_keep`` changes by a tenth, prune to ``feed_keep``. Done after
        a save, so the saved files of this copy (at ``seq``) stay followable whenever they are within the kept
        part; any copy behind reloads (see :meth:`_follow`)."""
        if self.head_seq - self.store.pruned_through() > self.feed_keep + self.feed_keep // 10:
            self.store.prune_changes(self.feed_keep)

    def _maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= self.save_interval_s:
            self._save()

    # -- following the change feed ------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.manifest.generation

    def refresh(self) -> bool:
        """Apply what other processes committed since this index's ``seq``; True when something was applied.
        When nothing changed this is one ``SELECT max(seq)``."""
        head = self.store.head()
        self.head_seq = head
        self.last_check = time.monotonic()
        self.sync_error = None
        if head <= self.seq:
            return False
        with self._write_mutex:
            return self._follow()

    def _follow(self) -> bool:
        """Callers hold the write mutex. Adopt a newer generation, then apply the feed up to its head."""
        head = self.store.head()
        self.head_seq = max(self.head_seq, head)
        if head <= self.seq:
            return False
        generation, spec = self.store.generation()
        pruned = self.store.pruned_through()
        if generation > self.manifest.generation or self.seq < pruned:
            # A newer generation, or changes this copy has not applied were pruned: the feed cannot bring it up
            # to date, the current index can.
            self._adopt_generation(generation, spec, pruned)
        while self.seq < head:  # in pages: a copy far behind never holds the whole backlog in memory
            upto = min(head, self.seq + FEED_PAGE)
            self._apply(self.store.changes_since(self.seq, upto))
            self.seq = upto
        return True

    def _apply(self, changes: Sequence[Change]) -> None:
        """The net effect of ``changes`` checked against the database (idempotent: a change this copy already
        holds, such as its own write, is skipped)."""
        edited = sorted({c.image_id for c in changes if c.image_id is not None and c.op == "update"})
        if edited:  # a store that keeps labels for its own filters (Milvus) takes the new ones
            with self._rw.write():
                self._index.refresh(np.asarray(edited, np.int64))
        touched = sorted({c.image_id for c in changes if c.image_id is not None and c.op in ("add", "remove")})
        if not touched:
            return
        stored = self.store.existing_ids(touched)
        with self._rw.read():
            present = np.isin(np.asarray(touched, np.int64), self._index.ids()).tolist()
        remove = [i for i, here in zip(touched, present, strict=True) if here and i not in stored]
        add = [i for i, here in zip(touched, present, strict=True) if not here and i in stored]
        if remove and not self._index.supports_remove:
            logger.info("%s: %d row(s) removed elsewhere; rebuilding the %s index aside", self.directory,
                        len(remove), self.index_type)  # fmt: skip
            self._swap(self._build_from_db(), dirty=False)
            return
        if remove:
            with self._rw.write():
                self._index.remove(np.asarray(remove, np.int64))
        self._add_stored(add)
        if add or remove:
            logger.info("%s: followed the change feed: +%d -%d rows", self.directory, len(add), len(remove))

    def _add_stored(self, ids: Sequence[int]) -> None:
        for batch_ids, vectors in self.store.iter_embeddings(ids=ids, batch=APPLY_BATCH):
            with self._rw.write():
                self._index.add(batch_ids, vectors, train=False)
        if len(ids):
            with self._rw.write():
                self._index.maybe_train()

    def _adopt_generation(self, generation: int, spec: dict[str, Any] | None, pruned: int = 0) -> None:
        """Another process rebuilt the index, or this copy is behind the pruned part of the feed (``pruned``): load
        the saved files aside and swap them in when they are of that generation and can follow the feed from their
        position; otherwise (a rebuild on another host, files as old as this copy) rebuild from the database with
        the published index spec."""
        with self._write_lock():
            disk = Manifest.peek(self.directory)
            if (
                disk is not None
                and disk.generation >= generation
                and disk.seq >= pruned
                and disk.collection_id == self.manifest.collection_id
                and (disk.generation > self.manifest.generation or disk.seq > self.seq)
            ):
                index = load_store(disk.index, disk.embedding_dim, directory=self.directory,
                                   collection_id=disk.collection_id, records=self.store.get_many,
                                   device=self._store_device(), config=self.backend_config)  # fmt: skip
                self._swap(index, dirty=False)
                self.manifest = disk
                self.seq = disk.seq
                logger.info("%s: adopted index generation %d (%s, seq %d)", self.directory, disk.generation,
                            disk.index.type, disk.seq)  # fmt: skip
                return
            head = self.store.head()
            if spec is not None:
                params = resolve_options(spec["type"], spec["params"])
                self.manifest.index = self.manifest.index.model_copy(update={"type": spec["type"], "params": params})
            if self.seq < pruned:
                logger.info("%s: behind the pruned change feed (seq %d < %d); rebuilding from the database",
                            self.directory, self.seq, pruned)  # fmt: skip
            self._swap(self._build_from_db())
            self.manifest.generation = max(generation, self.manifest.generation)
            self.seq = head
            self._save()
            logger.info("%s: rebuilt generation %d (%s) from the database", self.directory, generation,
                        self.manifest.index.type)  # fmt: skip

    def _publish_generation(self, seq_before: int) -> None:
        """Record this index's generation and spec in the database (followers adopt it)."""
        spec = {"type": self.manifest.index.type, "params": self.manifest.index.params}
        seq = self.store.record_rebuild(self.manifest.generation, spec)
        if seq == seq_before + 1:  # nothing else committed in between: this copy reflects the feed up to it
            self.seq = self.head_seq = seq

    def start_following(self, interval_s: float) -> None:
        """Follow the change feed in a background thread (servers): every ``interval_s`` a ``refresh()``."""
        if self._follower is not None or interval_s <= 0:
            return
        self._stop_following.clear()
        self.follow_interval_s = interval_s

        def loop() -> None:
            failing = False
            # The first check at once: until one succeeded, searches and statistics read the database themselves
            # (confirmed_head), so a server that just started does not wait an interval for its caches.
            while True:
                try:
                    self.refresh()
                    if failing:
                        logger.info("%s: following the change feed again", self.directory)
                    failing = False
                except CollectionError as error:  # DatabaseUnavailable, unreadable index files: retried next tick
                    self.sync_error = str(error)
                    if not failing:
                        logger.warning("%s: cannot follow the change feed: %s", self.directory, error)
                    failing = True
                except Exception as error:  # anything else must not end following for good: logged, retried
                    self.sync_error = f"{type(error).__name__}: {error}"
                    logger.exception("%s: following the change feed failed", self.directory)
                    failing = True
                if self._stop_following.wait(interval_s):
                    return

        self._follower = threading.Thread(target=loop, name="msir-follow", daemon=True)
        self._follower.start()

    @property
    def following(self) -> bool:
        return self._follower is not None

    def confirmed_head(self) -> int | None:
        """The feed's head as the follower saw it, when it is following and its last check succeeded within three
        intervals; None otherwise (not followed, the database unreachable, the follower stalled): read it then."""
        if self._follower is None or self.sync_error is not None or self.last_check is None:
            return None
        if time.monotonic() - self.last_check > 3 * self.follow_interval_s:
            return None
        return self.head_seq

    def stop_following(self) -> None:
        if self._follower is not None:
            self._stop_following.set()
            self._follower.join()
            self._follower = None

    def sync_state(self, head: int | None = None) -> dict[str, Any]:
        """Generation, feed position and lag of this index copy (``head``: a fresh ``max(seq)``, else the last)."""
        head = self.head_seq if head is None else head
        return {
            "generation": self.manifest.generation,
            "seq": self.seq,
            "head": head,
            "lag": max(0, head - self.seq),
            "following": self._follower is not None,
            "last_check_age_s": None if self.last_check is None else round(time.monotonic() - self.last_check, 3),
            "error": self.sync_error,
        }

    def _advance(self, written: tuple[int, int] | None) -> None:
        """After an own write: when its feed entries directly follow this copy's position, nobody else wrote in
        between and the position moves past them (else the next refresh re-checks them, idempotently)."""
        if written is not None and written[0] == self.seq + 1:
            self.seq = written[1]
            self.head_seq = max(self.head_seq, self.seq)

    def _store_device(self) -> str:
        return self._index.device if self._index.device in ("cpu", "cuda") else "cpu"

    def _build_from_db(self, *, progress: bool = False) -> VectorStore:
        fresh = new_store(self.manifest.index, self.manifest.embedding_dim, directory=self.directory,
                          collection_id=self.manifest.collection_id, records=self.store.get_many,
                          device=self._store_device(), config=self.backend_config)  # fmt: skip
        try:
            fill_from_db(self.store, fresh, batch=self.scan_batch, progress=progress)
        except BaseException:
            fresh.close()
            raise
        return fresh

    def _swap(self, index: VectorStore, *, dirty: bool = True) -> None:
        with self._rw.write():
            old, self._index = self._index, index
        self._retired.append(old)
        self._dirty |= dirty
