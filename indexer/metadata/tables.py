"""Metadata database: typed ORM tables, engine set-up (SQLite or any SQLAlchemy URL) and Alembic migrations.

The database is the source of truth of a collection. Besides the metadata of every image it stores the image's
embedding (float32 bytes): ``msir-index rebuild`` rebuilds the FAISS index from the database alone, without
decoding a single image, and an index that lags the database after a crash is caught up from it.

The schema is owned by the Alembic migrations shipped in ``indexer/metadata/migrations``; :func:`migrate` runs them on
open with a configuration built in code (no ``alembic.ini`` needed), and refuses a database whose schema is newer
than this code knows.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    exc,
    make_url,
)
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from indexer.errors import CollectionError, DatabaseUnavailable

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
DEFAULT_DB_NAME = "metadata.db"
# Errors that mean "the server is not there / the connection broke" rather than a bug in a statement.
CONNECTION_ERRORS = (exc.OperationalError, exc.InterfaceError)

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid; elsewhere ids are 64-bit like FAISS ids.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    """One indexed image. ``id`` is the FAISS id and is never reused (SQLite AUTOINCREMENT, Postgres sequence)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("sha256", name="uq_images_sha256"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(Text, index=True)
    path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    split: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(200))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # "metadata" is reserved by the declarative base, hence the attribute name.
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    # The copy descriptor (models.copy_descriptor, float32 bytes) that near-duplicate groups compare; NULL for rows
    # stored before migration 0004 until `msir-index duplicates` computes it from the row's file.
    copy_descriptor: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class ChangeRow(Base):
    """The change feed: one row per image added, removed or edited, plus one per index rebuild, written in the same
    transaction as the change. ``seq`` only grows (never reused) and, because writers serialise their commits
    (SQLite's write lock, a PostgreSQL advisory lock), a reader that sees ``max(seq) = S`` has seen every change up
    to ``S``: a process that applied the feed up to ``S`` only needs the rows after it."""

    __tablename__ = "changes"
    __table_args__ = ({"sqlite_autoincrement": True},)

    seq: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    image_id: Mapped[int | None] = mapped_column(IdType, nullable=True)
    op: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CollectionInfo(Base):
    """Key/value facts about the collection (id, checkpoint, embedding dim) so a database and a directory can be
    checked against each other."""

    __tablename__ = "collection_info"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every timestamp we write is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def default_url(directory: Path) -> str:
    return f"sqlite:///{(directory / DEFAULT_DB_NAME).resolve()}"


def safe_url(url: str) -> str:
    """The URL without its password (what logs and the manifest may show)."""
    parsed = make_url(url)
    if parsed.password is None:
        return parsed.render_as_string(hide_password=False)
    return parsed.set(password=None).render_as_string(hide_password=False)


def is_default_url(url: str, directory: Path) -> bool:
    return make_url(url) == make_url(default_url(directory))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough under WAL: a crash loses at most the last commit
    cursor.close()


def make_engine(url: str) -> Engine:
    """Engine for ``url``: SQLite gets WAL, foreign keys and a busy timeout; servers get pre-ping (so a restarted
    server is noticed) and a short connect timeout (so an unreachable one fails fast)."""
    try:
        parsed: URL = make_url(url)
    except exc.ArgumentError as error:
        raise CollectionError(f"database URL {url!r} is not a valid SQLAlchemy URL ({error})") from error
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
    try:
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ImportError, exc.NoSuchModuleError) as error:
        raise CollectionError(f"database URL {safe_url(url)}: driver not available ({error})") from error


@contextlib.contextmanager
def db_errors(engine: Engine) -> Iterator[None]:
    """Turn connection failures into :class:`DatabaseUnavailable` naming the (password-free) URL."""
    try:
        yield
    except CONNECTION_ERRORS as error:
        raise DatabaseUnavailable(
            f"metadata database {engine.url.render_as_string(hide_password=True)} is unavailable: "
            f"{getattr(error, 'orig', None) or error}"
        ) from error


def alembic_config() -> Config:
    """Alembic configuration built in code: the shipped migrations (the connection is passed by the caller)."""
    from alembic.config import Config  # alembic is imported only when a schema is checked (startup time)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "indexer/metadata/migrations has no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db_errors(engine), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, directory: Path | None = None) -> str:
    """Bring the schema to this code's head; refuse a database migrated by a newer msir. Returns the revision.
    ``directory``: the collection folder, for migrations that rewrite paths relative to it."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    current = current_revision(engine)
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError as error:
            shown = engine.url.render_as_string(hide_password=True)
            raise CollectionError(
                f"metadata database {shown} has schema revision {current!r}, newer than this msir knows "
                f"(head {script.get_current_head()!r}); upgrade msir to use this collection"
            ) from error
    head = script.get_current_head()
    if current != head:
        logger.info(
            "migrating metadata database %s: %s -> %s",
            engine.url.render_as_string(hide_password=True),
            current,
            head,
        )
        with db_errors(engine), engine.begin() as conn:
            config.attributes["connection"] = conn
            config.attributes["collection_dir"] = directory
            command.upgrade(config, "head")
    assert head is not None
    return head
