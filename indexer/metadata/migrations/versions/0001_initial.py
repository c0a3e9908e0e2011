"""Initial schema: images (metadata + embedding) and collection_info.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", IdType, primary_key=True, autoincrement=True),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("split", sa.String(64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("sha256", name="uq_images_sha256"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_uri", "images", ["uri"])
    op.create_index("ix_images_split", "images", ["split"])
    op.create_table(
        "collection_info",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("collection_info")
    op.drop_index("ix_images_split", table_name="images")
    op.drop_index("ix_images_uri", table_name="images")
    op.drop_table("images")
