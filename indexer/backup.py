"""``msir-index backup`` / ``restore``: a collection as one portable archive, restorable under another path and into
another database (SQLite <-> PostgreSQL).

The archive is a tar holding

* ``rows/<table>.jsonl``: every row of the metadata tables as JSON lines (embeddings base64, times ISO 8601): no
  pickle, no database-specific dump, so a SQLite collection restores into PostgreSQL and back;
* ``collection/``: the collection manifest, the saved index of its current generation and every file inside the
  collection that a row refers to (uploads; rows store them relative to the collection, see :mod:`indexer.row_paths`);
* ``backup.json``: what was taken (collection id, index generation and feed position, schema revision, id
  sequences, row counts) and the sha256 and size of every other member.

The snapshot is consistent: it is taken under the collection's writer lock (the folder's file lock, and on PostgreSQL
its advisory lock), so no commit, upload or index save happens between reading the rows (one transaction) and copying
the files and index they name. Restore checks every member against ``backup.json`` before it writes anything, builds
the collection beside the target and moves it into place only when the rows are committed: a damaged archive (a
flipped byte, a missing member) is refused in one line and leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa

from indexer import row_paths
from indexer.errors import CollectionError
from indexer.locks import directory_lock
from indexer.manifest import MANIFEST_FILE, Manifest, now_iso
from indexer.metadata.queries import MetadataStore
from indexer.metadata.tables import Base, db_errors, default_url, head_revision, safe_url
from indexer.vectors.backends import backend

logger = logging.getLogger(__name__)

FORMAT = "msir-backup"
FORMAT_VERSION = 1
BACKUP_FILE = "backup.json"
ROWS = "rows"
FILES = "collection"
TABLES = ("collection_info", "images", "changes")  # restore order
SEQUENCES = {"images": "id", "changes": "seq"}  # ids are never reused: the restored counters continue from here
CHUNK = 1 << 20


class BackupError(CollectionError):
    """An archive that cannot be restored (damaged, incomplete, of another format) or a target that is not empty."""


@dataclass
class BackupReport:
    archive: str
    collection_id: str
    rows: dict[str, int]
    files: int
    generation: int
    seq: int
    external_files: int = 0  # rows naming files outside the collection (a user's dataset): referenced, not copied
    bytes: int = 0


@dataclass
class RestoreReport:
    directory: str
    database: str
    collection_id: str
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0
    generation: int = 0


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        if "$b64" in value:
            return base64.b64decode(value["$b64"])
        if "$dt" in value:
            return datetime.fromisoformat(value["$dt"])
    return value


def _sequence_values(conn: sa.Connection) -> dict[str, int]:
    """The last id handed out per table (higher than the largest row when the newest rows were deleted)."""
    out: dict[str, int] = {}
    for table, column in SEQUENCES.items():
        largest = conn.execute(sa.text(f"SELECT max({column}) FROM {table}")).scalar() or 0
        if conn.dialect.name == "sqlite":
            counter = conn.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}).scalar()
        elif conn.dialect.name == "postgresql":
            name = conn.execute(sa.text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": column}).scalar()
            row = conn.execute(sa.text(f"SELECT last_value, is_called FROM {name}")).one()
            counter = row.last_value if row.is_called else 0
        else:
            counter = 0
        out[table] = int(max(largest, counter or 0))
    return out


def _set_sequences(conn: sa.Connection, values: dict[str, int]) -> None:
    for table, column in SEQUENCES.items():
        value = int(values.get(table, 0))
        if value <= 0:
            continue
        if conn.dialect.name == "sqlite":
            conn.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t"), {"t": table})
            conn.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :v)"), {"t": table, "v": value})
        elif conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence(:t, :c), :v)"),
                         {"t": table, "c": column, "v": value})  # fmt: skip


def _add_file(tar: tarfile.TarFile, members: dict[str, dict[str, Any]], name: str, source: Path) -> int:
    size = source.stat().st_size
    members[name] = {"sha256": _sha256_file(source), "size": size}
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(source.stat().st_mtime)
    with source.open("rb") as f:
        tar.addfile(info, f)
    return size


def _add_bytes(tar: tarfile.TarFile, members: dict[str, dict[str, Any]] | None, name: str, data: bytes) -> None:
    if members is not None:
        members[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _dump_table(conn: sa.Connection, table: sa.Table) -> tuple[bytes, int]:
    lines = []
    for row in conn.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings():
        lines.append(json.dumps({k: _encode(v) for k, v in row.items()}, allow_nan=False, separators=(",", ":")))
    return ("\n".join(lines) + ("\n" if lines else "")).encode(), len(lines)


@contextlib.contextmanager
def _snapshot(conn: sa.Connection) -> Iterator[None]:
    """One transaction that sees one state of every table (REPEATABLE READ where the database has it)."""
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="REPEATABLE READ")
    with conn.begin():
        yield


def backup(directory: Path, archive: Path, database_url: str | None = None) -> BackupReport:
    """Write a consistent snapshot of the collection ``directory`` to ``archive`` (written aside, then renamed)."""
    directory = directory.resolve()
    manifest = Manifest.load(directory)
    url = database_url or manifest.database or default_url(directory)
    store = MetadataStore(url)
    tmp = archive.with_name(f".{archive.name}.{uuid.uuid4().hex[:8]}.tmp")
    members: dict[str, dict[str, Any]] = {}
    try:
        store.migrate(directory)  # rows store relative paths before they are read
        with directory_lock(directory), store.exclusive(), db_errors(store.engine), store.engine.connect() as conn:
            manifest = Manifest.load(directory)  # under the lock: the generation whose files are copied below
            if manifest.index.backend != "faiss":
                raise CollectionError(
                    f"{directory}: backup covers FAISS-indexed collections; this one's index lives in "
                    f"{manifest.index.backend} (back that up with its own tools)"
                )
            with _snapshot(conn), tarfile.open(tmp, "w") as tar:
                revision = current_revision_of(conn)
                counts: dict[str, int] = {}
                for name in TABLES:
                    data, counts[name] = _dump_table(conn, Base.metadata.tables[name])
                    _add_bytes(tar, members, f"{ROWS}/{name}.jsonl", data)
                sequences = _sequence_values(conn)
                paths = [r.path for r in conn.execute(sa.text("SELECT path FROM images WHERE path IS NOT NULL"))]
                files = external = 0
                total = 0
                for stored in sorted(set(paths)):
                    if PurePosixPath(stored).is_absolute():
                        external += 1
                        continue
                    source = row_paths.resolve(directory, stored)
                    if not source.is_file():
                        raise CollectionError(
                            f"{directory}: the file {stored} that a row names is missing; run `msir-index verify` "
                            f"and restore or remove it before a backup"
                        )
                    total += _add_file(tar, members, f"{FILES}/{stored}", source)
                    files += 1
                for name in (MANIFEST_FILE, *backend(manifest.index.backend).own_files):
                    if (directory / name).is_file():
                        total += _add_file(tar, members, f"{FILES}/{name}", directory / name)
                header = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "created_at": now_iso(),
                    "collection_id": manifest.collection_id,
                    "source_database": conn.dialect.name,
                    "schema_revision": revision,
                    "generation": manifest.generation,
                    "seq": manifest.seq,
                    "rows": counts,
                    "sequences": sequences,
                    "external_files": external,
                    "members": members,
                }
                _add_bytes(tar, None, BACKUP_FILE, json.dumps(header, indent=1).encode())
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
        store.close()
    logger.info("backed up %s to %s: %s rows, %d files", directory, archive, counts, files)
    return BackupReport(str(archive), manifest.collection_id, counts, files, manifest.generation, manifest.seq,
                        external, archive.stat().st_size)  # fmt: skip


def current_revision_of(conn: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def _check_and_extract(archive: Path, staging: Path) -> dict[str, Any]:
    """Every member checked against ``backup.json`` (name, size, sha256; none missing, none extra) while it is
    extracted into ``staging``. Raises :class:`BackupError` naming the first problem."""
    try:
        tar = tarfile.open(archive, "r")  # noqa: SIM115 - closed by the with below; opening errors get their message
    except (OSError, tarfile.TarError) as error:
        raise BackupError(f"{archive}: not a readable backup archive ({error})") from error
    with tar:
        try:
            entries = tar.getmembers()
            by_name = {m.name: m for m in entries}
            if BACKUP_FILE not in by_name:
                raise BackupError(f"{archive}: {BACKUP_FILE} missing; not an msir backup or a damaged one")
            raw = tar.extractfile(by_name[BACKUP_FILE])
            assert raw is not None
            header = json.loads(raw.read())
            if header.get("format") != FORMAT or int(header.get("format_version", 0)) > FORMAT_VERSION:
                raise BackupError(f"{archive}: not an msir backup of a format this msir reads")
            members: dict[str, dict[str, Any]] = header["members"]
            extra = sorted(set(by_name) - set(members) - {BACKUP_FILE})
            if extra:
                raise BackupError(f"{archive}: damaged: member {extra[0]} is not listed in {BACKUP_FILE}")
            missing = sorted(set(members) - set(by_name))
            if missing:
                raise BackupError(f"{archive}: damaged: member {missing[0]} is missing")
            for name, want in members.items():
                entry = by_name[name]
                if not entry.isfile() or not _safe_member(name):
                    raise BackupError(f"{archive}: member {name!r} refused (not a plain file under the archive)")
                source = tar.extractfile(entry)
                assert source is not None
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                size = 0
                with target.open("wb") as out:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                if size != want["size"] or digest.hexdigest() != want["sha256"]:
                    raise BackupError(f"{archive}: damaged: member {name} does not match its sha256 in {BACKUP_FILE}")
        except (OSError, tarfile.TarError, EOFError, ValueError, KeyError, TypeError) as error:
            kind = type(error).__name__
            raise BackupError(f"{archive}: damaged or not a backup archive ({kind}: {error})") from error
    return header


def _read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [{k: _decode(v) for k, v in json.loads(line).items()} for line in f if line.strip()]


def restore(archive: Path, target: Path, database_url: str | None = None) -> RestoreReport:
    """Restore ``archive`` as the collection ``target`` (which must not exist or be empty), its rows into
    ``database_url`` (default: ``metadata.db`` in ``target``; a server database must hold no collection)."""
    target = target.resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target}: exists and is not empty; restore into a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.restore-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    store: MetadataStore | None = None
    created_tables = False
    try:
        header = _check_and_extract(archive, staging)
        if header.get("schema_revision") != head_revision():
            raise BackupError(
                f"{archive}: made at schema revision {header.get('schema_revision')!r}, this msir is at "
                f"{head_revision()!r}; restore it with the msir that made it, then upgrade"
            )
        rows_dir = staging / ROWS
        files_dir = staging / FILES
        url = database_url or default_url(staging)
        store = MetadataStore(url)
        with db_errors(store.engine), store.engine.connect() as conn:
            existing = sa.inspect(conn).get_table_names()
        if any(name in existing for name in TABLES):
            raise BackupError(f"database {store.display_url} already holds msir tables; restore into an empty one")
        created_tables = True
        store.migrate(target)
        rows: dict[str, int] = {}
        with db_errors(store.engine), store.engine.begin() as conn:
            for name in TABLES:
                table = Base.metadata.tables[name]
                data = _read_rows(rows_dir / f"{name}.jsonl")
                for start in range(0, len(data), 1000):
                    conn.execute(sa.insert(table), data[start : start + 1000])
                rows[name] = len(data)
            _set_sequences(conn, header.get("sequences", {}))
        if rows != header["rows"]:
            raise BackupError(f"{archive}: row counts {rows} differ from the recorded {header['rows']}")
        manifest = Manifest.load(files_dir)
        manifest.database = None if database_url is None else safe_url(database_url)
        (files_dir / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        store.close()
        store = None
        if database_url is None:  # the SQLite file moves with the folder
            for suffix in ("", "-wal", "-shm"):
                db = staging / f"metadata.db{suffix}"
                if db.exists():
                    os.replace(db, files_dir / db.name)
        if target.exists():
            target.rmdir()
        os.replace(files_dir, target)
        files = sum(1 for p in (target / "uploads").rglob("*") if p.is_file()) if (target / "uploads").is_dir() else 0
    except BaseException:
        if store is not None and created_tables and database_url is not None:
            _drop_restored(store)
        raise
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(staging, ignore_errors=True)
    shown = safe_url(database_url) if database_url else str(target / "metadata.db")
    logger.info("restored %s into %s (database %s): %s rows", archive, target, shown, rows)
    return RestoreReport(str(target), shown, header["collection_id"], rows, files, int(header["generation"]))


def _drop_restored(store: MetadataStore) -> None:
    """Undo a restore that failed after creating its tables in a server database (it was empty before)."""
    try:
        with store.engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    except sa.exc.SQLAlchemyError:
        logger.exception("could not drop the tables of the failed restore in %s", store.display_url)
