"""Alembic environment of the indexer's metadata database.

Run programmatically by :func:`indexer.metadata.tables.migrate`, which passes an open connection in
``config.attributes["connection"]``; the URL branch exists for developers generating revisions with
``alembic -c indexer/metadata/alembic.ini revision --autogenerate``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from indexer.metadata.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
