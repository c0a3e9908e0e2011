"""Every query the indexer makes against the metadata database, behind one small class.

Each public method is one short transaction and turns connection failures into
:class:`~indexer.errors.DatabaseUnavailable`. Embeddings travel as float32 little-endian bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Text, bindparam, cast, delete, func, insert, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from indexer.metadata.tables import ChangeRow, CollectionInfo, ImageRow, as_utc, db_errors, make_engine, migrate, utcnow
from indexer.records import ImageRecord

# Rows per fetch of a full scan (rebuild, catch-up): 10,000 x 128 float32 = 5 MB a batch.
SCAN_BATCH = 10_000

logger = logging.getLogger(__name__)

# Parameters per IN (...) query: far below SQLite's and PostgreSQL's limits.
CHUNK = 2000
RECORD_COLUMNS = (
    ImageRow.id,
    ImageRow.path,
    ImageRow.uri,
    ImageRow.sha256,
    ImageRow.labels,
    ImageRow.split,
    ImageRow.width,
    ImageRow.height,
    ImageRow.source,
    ImageRow.added_at,
    ImageRow.user_metadata,
)

# Rows by id, built once: every search reads its neighbours' rows with it, so it skips the ORM session and the
# statement construction (measured: 2.3 vs 6-9 ms for 10 rows on a busy 2-core machine). Same columns and names
# as RECORD_COLUMNS ("metadata" is read under its attribute name).
HEAD = select(func.max(ChangeRow.seq))
GET_MANY = select(*RECORD_COLUMNS[:-1], ImageRow.user_metadata.label("user_metadata")).where(
    ImageRow.id.in_(bindparam("ids", expanding=True))
)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


UNLABELLED = "(unlabelled)"


def _chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _filter_conditions(labels: Sequence[str] | None, split: str | None) -> list[Any]:
    """SQL conditions of a label (any of) / split filter, shared by :meth:`MetadataStore.page` and
    :meth:`MetadataStore.allowed_ids` so listing and searching agree on what passes."""
    conditions: list[Any] = []
    if split is not None:
        conditions.append(ImageRow.split == split)
    if labels:
        # Labels are a JSON list of strings: '"cat"' (quotes included) occurs in its text exactly when "cat" is
        # an element, since quotes inside a label are escaped. Portable across SQLite and PostgreSQL.
        as_text = cast(ImageRow.labels, Text)
        conditions.append(or_(*(as_text.contains(json.dumps(label), autoescape=True) for label in labels)))
    return conditions


def _record(row: Any) -> ImageRecord:
    return ImageRecord(
        id=int(row.id),
        path=Path(row.path) if row.path else None,
        uri=row.uri,
        sha256=row.sha256,
        labels=list(row.labels or []),
        split=row.split,
        width=int(row.width),
        height=int(row.height),
        source=row.source,
        added_at=as_utc(row.added_at),
        metadata=dict(row.user_metadata or {}),
    )


# PostgreSQL advisory lock of one collection (one per schema): writers on any host queue on it, so sharded builds
# (``msir-index build --shard I/N``) and servers can write into one collection at once.
LOCK_KEY = "SELECT hashtext('msir-collection:' || current_schema())"
GENERATION_KEY = "index_generation"
PRUNED_KEY = "feed_pruned_through"  # changes with seq <= this value were deleted by prune_changes
INDEX_SPEC_KEY = "index_spec"


@dataclass(frozen=True)
class Change:
    seq: int
    image_id: int | None
    op: str  # add | remove | update | rebuild


class MetadataStore:
    """The metadata database of one collection.

    Every write also appends to the change feed (table ``changes``) in the same transaction; :meth:`head` is the
    newest ``seq`` and :meth:`changes_since` what a process holding an index copy has not applied yet.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._postgres = self.engine.dialect.name == "postgresql"
        self.last_feed: tuple[int, int] | None = None  # (first, last) seq of this store's last add/remove
        # Deletes and edits this object committed: a cache of rows in this process keys on it (indexer.row_cache),
        # so an own write is seen at once, before the change feed's follower gets to it.
        self.row_writes = 0

    # -- change feed ----------------------------------------------------------------------------------------
    def _feed(self, s: Session, ids: Sequence[int | None], op: str) -> tuple[int, int]:
        """Append ``op`` for ``ids``; returns the first and last seq written (callers hold the feed lock)."""
        now = utcnow()
        stmt = insert(ChangeRow).returning(ChangeRow.seq, sort_by_parameter_order=True)
        seqs = s.scalars(stmt, [{"image_id": i, "op": op, "at": now} for i in ids]).all()
        return int(seqs[0]), int(seqs[-1])

    def head(self) -> int:
        """The newest change's seq (0: none). One indexed lookup: what a follower polls and every search reads
        (through a plain connection: an ORM session costs more than the query)."""
        with db_errors(self.engine), self.engine.connect() as conn:
            return int(conn.execute(HEAD).scalar() or 0)

    def changes_since(self, after: int, upto: int | None = None) -> list[Change]:
        with db_errors(self.engine), self.session() as s:
            query = select(ChangeRow.seq, ChangeRow.image_id, ChangeRow.op).where(ChangeRow.seq > after)
            if upto is not None:
                query = query.where(ChangeRow.seq <= upto)
            rows = s.execute(query.order_by(ChangeRow.seq)).all()
        return [Change(int(r.seq), None if r.image_id is None else int(r.image_id), r.op) for r in rows]

    def pruned_through(self) -> int:
        """Changes with ``seq`` <= this were pruned (0: none): a copy at an older position cannot follow the feed
        and must reload the current index instead."""
        with db_errors(self.engine), self.session() as s:
            row = s.get(CollectionInfo, PRUNED_KEY)
            return int(row.value) if row is not None else 0

    def prune_changes(self, keep: int) -> int:
        """Delete all but the newest ``keep`` (>= 1) changes, so the feed stays bounded; returns how many went.
        The newest change always stays: ``head()`` is ``max(seq)`` and must not move back. The horizon is recorded
        in the same transaction, so a follower sees either both or neither."""
        keep = max(1, int(keep))
        with db_errors(self.engine), self.session() as s, s.begin():
            self._lock_transaction(s)
            head = int(s.scalar(select(func.max(ChangeRow.seq))) or 0)
            row = s.get(CollectionInfo, PRUNED_KEY)
            before = int(row.value) if row is not None else 0
            horizon = head - keep
            if horizon <= before:
                return 0
            deleted = s.execute(delete(ChangeRow).where(ChangeRow.seq <= horizon)).rowcount
            s.merge(CollectionInfo(key=PRUNED_KEY, value=horizon))
        logger.info("pruned %d change(s) of the feed, through seq %d", deleted, horizon)
        return int(deleted or 0)

    def generation(self) -> tuple[int, dict[str, Any] | None]:
        """The index generation recorded by the last rebuild, and its index spec (``{"type", "params"}``)."""
        with db_errors(self.engine), self.session() as s:
            gen = s.get(CollectionInfo, GENERATION_KEY)
            spec = s.get(CollectionInfo, INDEX_SPEC_KEY)
            return (int(gen.value) if gen is not None else 0), (spec.value if spec is not None else None)

    def record_rebuild(self, generation: int, spec: dict[str, Any]) -> int:
        """Publish a rebuilt index: generation + spec and a ``rebuild`` change, in one transaction; returns its seq."""
        with db_errors(self.engine), self.session() as s, s.begin():
            self._lock_transaction(s)
            s.merge(CollectionInfo(key=GENERATION_KEY, value=int(generation)))
            s.merge(CollectionInfo(key=INDEX_SPEC_KEY, value=spec))
            return self._feed(s, [None], "rebuild")[1]

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def migrate(self, directory: Path | None = None) -> str:
        with self.exclusive():  # N shard processes starting at once: one creates the schema, the others wait
            return migrate(self.engine, directory)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The collection's writer lock across processes and hosts (PostgreSQL session advisory lock); SQLite
        serialises writers itself (and the collection folder's file lock does the rest)."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with db_errors(self.engine), self.engine.connect() as conn:
            conn.execute(text(f"SELECT pg_advisory_lock(({LOCK_KEY}))"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text(f"SELECT pg_advisory_unlock(({LOCK_KEY}))"))
                conn.commit()

    def _lock_transaction(self, s: Session) -> None:
        """Serialise this write transaction with every other writer of the collection (PostgreSQL): the
        check-then-insert of :meth:`insert_new` cannot race between processes, and change-feed seq numbers are handed
        out in commit order (a follower never misses a change committed late with a smaller seq)."""
        if self.engine.dialect.name == "postgresql":
            s.execute(text(f"SELECT pg_advisory_xact_lock(({LOCK_KEY}))"))

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with db_errors(self.engine), self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # -- collection facts ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        with db_errors(self.engine), self.session() as s:
            return {row.key: row.value for row in s.scalars(select(CollectionInfo))}

    def set_info(self, values: dict[str, Any]) -> None:
        with db_errors(self.engine), self.session() as s, s.begin():
            self._lock_transaction(s)
            for key, value in values.items():
                s.merge(CollectionInfo(key=key, value=value))

    def adopt_info(self, values: dict[str, Any]) -> dict[str, Any]:
        """The collection facts, after writing ``values`` if the database holds no collection yet: one locked
        transaction, so processes starting at once on several hosts agree on one collection id."""
        with db_errors(self.engine), self.session() as s, s.begin():
            self._lock_transaction(s)
            info = {row.key: row.value for row in s.scalars(select(CollectionInfo))}
            if info.get("collection_id") is None:
                for key, value in values.items():
                    s.merge(CollectionInfo(key=key, value=value))
                info.update(values)
            return info

    # -- counts and ids -----------------------------------------------------------------------------------
    def count(self) -> int:
        with db_errors(self.engine), self.session() as s:
            return int(s.scalar(select(func.count()).select_from(ImageRow)) or 0)

    def ids(self) -> np.ndarray:
        """Every id, sorted, as int64."""
        with db_errors(self.engine), self.session() as s:
            found = s.scalars(select(ImageRow.id).order_by(ImageRow.id)).all()
        return np.asarray(found, dtype=np.int64)

    def existing_uris(self, uris: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with db_errors(self.engine), self.session() as s:
            for part in _chunks(list(dict.fromkeys(uris))):
                for row in s.execute(select(ImageRow.uri, ImageRow.id).where(ImageRow.uri.in_(part))):
                    found.setdefault(row.uri, int(row.id))
        return found

    def ids_for_paths(self, paths: Sequence[str]) -> list[int]:
        with db_errors(self.engine), self.session() as s:
            out: list[int] = []
            for part in _chunks(list(paths)):
                cond = ImageRow.path.in_(part) | ImageRow.uri.in_(part)
                out.extend(int(i) for i in s.scalars(select(ImageRow.id).where(cond)))
        return sorted(set(out))

    # -- writes -------------------------------------------------------------------------------------------
    def insert_new(self, rows: list[dict[str, Any]]) -> tuple[list[int | None], dict[int, int]]:
        """Insert ``rows`` (ImageRow fields, ``embedding`` as bytes) in ONE transaction, skipping duplicates.

        Returns ``(ids, duplicate_of)``: ``ids[i]`` is the new id of row ``i`` or None when its sha256 is already
        stored (or repeated earlier in ``rows``); ``duplicate_of[i]`` is then the id holding that content.
        Writers are serialised (the collection's lock; on PostgreSQL also an advisory lock per transaction, for
        writers on other hosts), so the check-then-insert cannot race.
        """
        ids: list[int | None] = [None] * len(rows)
        duplicate_of: dict[int, int] = {}
        self.last_feed: tuple[int, int] | None = None
        with db_errors(self.engine), self.session() as s, s.begin():
            self._lock_transaction(s)
            shas = [row["sha256"] for row in rows]
            existing: dict[str, int] = {}
            for part in _chunks(list(dict.fromkeys(shas))):
                for row in s.execute(select(ImageRow.sha256, ImageRow.id).where(ImageRow.sha256.in_(part))):
                    existing[row.sha256] = int(row.id)
            fresh: list[int] = []
            first_in_batch: dict[str, int] = {}
            for i, sha in enumerate(shas):
                if sha in existing:
                    duplicate_of[i] = existing[sha]
                elif sha in first_in_batch:
                    duplicate_of[i] = -1 - first_in_batch[sha]  # resolved below, once that row has an id
                else:
                    first_in_batch[sha] = i
                    fresh.append(i)
            if fresh:
                stmt = insert(ImageRow).returning(ImageRow.id, sort_by_parameter_order=True)
                new_ids = s.scalars(stmt, [rows[i] for i in fresh]).all()
                for i, new_id in zip(fresh, new_ids, strict=True):
                    ids[i] = int(new_id)
                self.last_feed = self._feed(s, [int(i) for i in new_ids], "add")
        for i, target in list(duplicate_of.items()):
            if target < 0:
                duplicate_of[i] = ids[-1 - target]  # type: ignore[assignment]
        return ids, duplicate_of

    def delete(self, ids: Iterable[int]) -> list[int]:
        """Delete rows; returns the ids that existed."""
        wanted = sorted({int(i) for i in ids})
        gone: list[int] = []
        self.last_feed = None
        with db_errors(self.engine), self.session() as s, s.begin():
            self._lock_transaction(s)
            for part in _chunks(wanted):
                gone.extend(int(i) for i in s.scalars(select(ImageRow.id).where(ImageRow.id.in_(part))))
                s.execute(delete(ImageRow).where(ImageRow.id.in_(part)))
            if gone:
                self.last_feed = self._feed(s, sorted(gone), "remove")
        self.row_writes += 1  # after the commit: a row read before it can no longer be cached under the new count
        return sorted(gone)

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
        """Change labels (replace with ``labels``, or add/remove some) and/or metadata (merged, or replaced) of
        rows, without touching their embeddings; returns the ids that exist. One transaction, one ``update``
        change per row."""
        wanted = sorted({int(i) for i in ids})
        found: list[int] = []
        with db_errors(self.engine), self.session() as s, s.begin():
            self._lock_transaction(s)
            for part in _chunks(wanted):
                rows = s.execute(
                    select(ImageRow.id, ImageRow.labels, ImageRow.user_metadata).where(ImageRow.id.in_(part))
                ).all()
                for row in rows:
                    new_labels = list(labels) if labels is not None else list(row.labels or [])
                    new_labels += [x for x in add_labels if x not in new_labels]
                    new_labels = [x for x in new_labels if x not in remove_labels]
                    new_meta = dict(row.user_metadata or {})
                    if metadata is not None:
                        new_meta = dict(metadata) if replace_metadata else {**new_meta, **metadata}
                    s.execute(
                        update(ImageRow).where(ImageRow.id == row.id).values(labels=new_labels, user_metadata=new_meta)
                    )
                    found.append(int(row.id))
            if found:
                self._feed(s, sorted(found), "update")
        self.row_writes += 1
        return sorted(found)

    def existing_ids(self, ids: Iterable[int]) -> set[int]:
        wanted = sorted({int(i) for i in ids})
        out: set[int] = set()
        with db_errors(self.engine), self.session() as s:
            for part in _chunks(wanted):
                out.update(int(i) for i in s.scalars(select(ImageRow.id).where(ImageRow.id.in_(part))))
        return out

    def sample_ids(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` distinct ids drawn over the id range, sorted: for each of ``n`` uniform points the first id at
        or after it (one primary-key lookup each, no table scan; a row after a gap in the ids is drawn more often)."""
        with db_errors(self.engine), self.session() as s:
            low, high = s.execute(select(func.min(ImageRow.id), func.max(ImageRow.id))).one()
            if low is None:
                return np.zeros(0, np.int64)
            points = np.random.default_rng(seed).integers(int(low), int(high) + 1, size=n)
            first = select(ImageRow.id).where(ImageRow.id >= bindparam("p")).order_by(ImageRow.id).limit(1)
            found = {int(s.scalar(first, {"p": int(p)})) for p in np.unique(points)}
        return np.asarray(sorted(found), dtype=np.int64)

    def label_names(self) -> list[str]:
        """Every label stored on at least one image, sorted: the collection's label vocabulary."""
        return sorted(self.summary()["labels"].keys() - {UNLABELLED})

    # -- reads --------------------------------------------------------------------------------------------
    def get_many(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        wanted = sorted({int(i) for i in ids})
        out: dict[int, ImageRecord] = {}
        if not wanted:
            return out
        with db_errors(self.engine), self.engine.connect() as conn:
            for part in _chunks(wanted):
                for row in conn.execute(GET_MANY, {"ids": list(part)}):
                    out[int(row.id)] = _record(row)
        return out

    def page(
        self, *, after: int | None, limit: int, labels: Sequence[str] | None = None, split: str | None = None
    ) -> tuple[list[ImageRecord], int]:
        """Rows with id > ``after`` in id order (at most ``limit``), carrying any of ``labels`` and in ``split``
        when given, and how many rows match the filters in all."""
        return self.page_rows(after=after, limit=limit, labels=labels, split=split), self.count_matching(labels, split)

    def page_rows(
        self, *, after: int | None, limit: int, labels: Sequence[str] | None = None, split: str | None = None
    ) -> list[ImageRecord]:
        """The rows of :meth:`page` alone: an index range scan from ``after`` (keyset), whatever the table size."""
        conditions = _filter_conditions(labels, split)
        with db_errors(self.engine), self.session() as s:
            query = select(*RECORD_COLUMNS).where(*conditions)
            if after is not None:
                query = query.where(ImageRow.id > int(after))
            rows = s.execute(query.order_by(ImageRow.id).limit(int(limit))).all()
        return [_record(row) for row in rows]

    def count_matching(self, labels: Sequence[str] | None = None, split: str | None = None) -> int:
        """Rows passing the filters: a scan of the table (or of its id index), so callers cache it."""
        conditions = _filter_conditions(labels, split)
        with db_errors(self.engine), self.session() as s:
            return int(s.scalar(select(func.count()).select_from(ImageRow).where(*conditions)) or 0)

    def allowed_ids(self, labels: Sequence[str] | None = None, split: str | None = None) -> np.ndarray:
        """Sorted ids (int64) of the rows carrying any of ``labels`` and in ``split``: what a filtered FAISS search
        turns into an ``IDSelector``. One id-only scan (8 bytes a row that passes), not one row read per hit."""
        conditions = _filter_conditions(labels, split)
        with db_errors(self.engine), self.engine.connect() as conn:
            query = select(ImageRow.id).where(*conditions).order_by(ImageRow.id).execution_options(yield_per=100_000)
            found = np.fromiter((int(i) for (i,) in conn.execute(query)), dtype=np.int64)
        return found

    def vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        wanted = sorted({int(i) for i in ids})
        out: dict[int, np.ndarray] = {}
        with db_errors(self.engine), self.session() as s:
            for part in _chunks(wanted):
                for row in s.execute(select(ImageRow.id, ImageRow.embedding).where(ImageRow.id.in_(part))):
                    out[int(row.id)] = from_bytes(row.embedding)
        return out

    def iter_embeddings(
        self, *, after_id: int | None = None, ids: Sequence[int] | None = None, batch: int = SCAN_BATCH
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids int64 [n], vectors float32 [n, D])`` batches of at most ``batch`` rows in id order: every row, rows
        after ``after_id``, or the given ``ids``.

        A scan is one query read through a server-side cursor (``yield_per``: PostgreSQL streams ``batch`` rows a
        fetch, SQLite steps its cursor), so memory holds one batch whatever the table size, and the rows come from
        one snapshot of the table (PostgreSQL) instead of a query per page."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if ids is not None:
            wanted = sorted({int(i) for i in ids})
            for part in _chunks(wanted, batch):
                found = self.vectors(part)
                keys = [i for i in part if i in found]
                if keys:
                    yield np.asarray(keys, dtype=np.int64), np.stack([found[i] for i in keys])
            return
        query = select(ImageRow.id, ImageRow.embedding).order_by(ImageRow.id)
        if after_id is not None:
            query = query.where(ImageRow.id > int(after_id))
        with db_errors(self.engine), self.engine.connect() as conn:
            result = conn.execute(query.execution_options(yield_per=batch))
            for rows in result.partitions():
                yield (
                    np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows)),
                    np.stack([from_bytes(r.embedding) for r in rows]),
                )

    def iter_copy_descriptors(self, *, batch: int = SCAN_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids int64 [n], descriptors float32 [n, D])`` batches, in id order, of the rows that have a copy
        descriptor (rows stored before migration 0004 have none until ``msir-index duplicates`` fills them)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        query = (
            select(ImageRow.id, ImageRow.copy_descriptor)
            .where(ImageRow.copy_descriptor.is_not(None))
            .order_by(ImageRow.id)
        )
        with db_errors(self.engine), self.engine.connect() as conn:
            result = conn.execute(query.execution_options(yield_per=batch))
            for rows in result.partitions():
                yield (
                    np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows)),
                    np.stack([from_bytes(r.copy_descriptor) for r in rows]),
                )

    def without_copy_descriptor(self) -> list[tuple[int, str | None]]:
        """``(id, stored path or None)`` of every row that has no copy descriptor yet, in id order."""
        with db_errors(self.engine), self.session() as s:
            query = select(ImageRow.id, ImageRow.path).where(ImageRow.copy_descriptor.is_(None)).order_by(ImageRow.id)
            return [(int(row.id), row.path) for row in s.execute(query)]

    def set_copy_descriptors(self, descriptors: dict[int, np.ndarray]) -> None:
        """Store copy descriptors of rows (one transaction; a row deleted meanwhile is simply not there). A
        descriptor is derived from the row's file, not an edit of the image, so no change is fed."""
        if not descriptors:
            return
        stmt = update(ImageRow).where(ImageRow.id == bindparam("row_id")).values(copy_descriptor=bindparam("blob"))
        with db_errors(self.engine), self.session() as s, s.begin():
            self._lock_transaction(s)
            s.connection().execute(stmt, [{"row_id": int(i), "blob": to_bytes(v)} for i, v in descriptors.items()])

    def labelled_embeddings(self, split: str | None) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """``(ids, vectors, labels)`` of one split (every row when None), in id order."""
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        labels: list[list[str]] = []
        with db_errors(self.engine), self.session() as s:
            query = select(ImageRow.id, ImageRow.embedding, ImageRow.labels).order_by(ImageRow.id)
            if split is not None:
                query = query.where(ImageRow.split == split)
            for row in s.execute(query.execution_options(yield_per=10_000)):
                ids.append(int(row.id))
                vecs.append(from_bytes(row.embedding))
                labels.append(list(row.labels or []))
        matrix = np.stack(vecs) if vecs else np.zeros((0, 0), np.float32)
        return np.asarray(ids, dtype=np.int64), matrix, labels

    def summary(self) -> dict[str, Any]:
        """Counts per split, per label and per source (for stats)."""
        splits: Counter[str] = Counter()
        labels: Counter[str] = Counter()
        sources: Counter[str] = Counter()
        with db_errors(self.engine), self.session() as s:
            for row in s.execute(
                select(ImageRow.split, ImageRow.source, func.count()).group_by(ImageRow.split, ImageRow.source)
            ):
                splits[row[0] or "(none)"] += int(row[2])
                sources[row[1]] += int(row[2])
            query = select(ImageRow.labels).execution_options(yield_per=20_000)
            for (row_labels,) in s.execute(query):
                labels.update(row_labels or [UNLABELLED])
        return {"splits": dict(splits), "labels": dict(labels.most_common()), "sources": dict(sources)}

    def problems(self, dim: int) -> dict[str, list[int] | list[str]]:
        """Rows whose embedding is not ``dim`` float32 values, and sha256 values stored twice."""
        with db_errors(self.engine), self.session() as s:
            bad = s.scalars(
                select(ImageRow.id).where(func.length(ImageRow.embedding) != dim * 4).order_by(ImageRow.id)
            ).all()
            dups = s.scalars(
                select(ImageRow.sha256).group_by(ImageRow.sha256).having(func.count() > 1).limit(100)
            ).all()
        return {"bad_embedding": [int(i) for i in bad], "duplicate_sha256": list(dups)}

    def iter_paths(self) -> Iterator[tuple[int, str]]:
        """``(id, path)`` of every row with a file of its own."""
        with db_errors(self.engine), self.session() as s:
            query = select(ImageRow.id, ImageRow.path).where(ImageRow.path.is_not(None)).order_by(ImageRow.id)
            for row in s.execute(query.execution_options(yield_per=20_000)):
                yield int(row.id), str(row.path)

    def max_id(self) -> int:
        with db_errors(self.engine), self.session() as s:
            return int(s.scalar(select(func.max(ImageRow.id))) or 0)
