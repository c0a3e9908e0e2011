"""Copy descriptors: ``images.copy_descriptor`` (float32 bytes of :mod:`models.copy_descriptor`), the vector that
near-duplicate groups compare. Rows stored before this revision get NULL: ``msir-index duplicates`` computes their
descriptors from their files (a migration does not decode images: it may run where the files are not).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("images", sa.Column("copy_descriptor", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:  # SQLite before 3.35 cannot drop a column in place
        batch.drop_column("copy_descriptor")
