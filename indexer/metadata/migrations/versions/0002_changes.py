"""Change feed: ``changes`` (seq, image id, op) that every process serving the collection follows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Rows indexed before the feed existed have no change row: a process opening such a collection catches its index
    # up by comparing ids (as before), then follows the feed from its head.
    op.create_table(
        "changes",
        sa.Column("seq", IdType, primary_key=True, autoincrement=True),
        sa.Column("image_id", IdType, nullable=True),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("changes")
