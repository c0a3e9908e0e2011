"""Row paths relative to the collection: an upload stored by its absolute path (``.../uploads/<xx>/<name>``) is stored
as ``uploads/<xx>/<name>``, and any other file inside the collection folder (when the caller names it) relative to it,
so that a copied, moved or restored collection finds its files. Files outside the collection keep their path.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

images = sa.table("images", sa.column("id", sa.BigInteger), sa.column("uri", sa.Text), sa.column("path", sa.Text))


def _relative(path: str, root: Path | None) -> str | None:
    # Frozen here (not imported): a migration must keep meaning what it meant when it was written.
    parts = PurePosixPath(path).parts
    if len(parts) >= 4 and parts[-3] == "uploads" and parts[-1].startswith(parts[-2]):
        return "/".join(parts[-3:])  # uploads are content-addressed: the same name holds the same bytes anywhere
    if root is not None and Path(path).is_relative_to(root):
        return Path(path).relative_to(root).as_posix()
    return None


def upgrade() -> None:
    given = context.config.attributes.get("collection_dir")
    root = Path(given).resolve() if given else None
    conn = op.get_bind()
    rows = conn.execute(sa.select(images.c.id, images.c.uri, images.c.path).where(images.c.path.like("/%"))).all()
    for row in rows:
        new = _relative(row.path, root)
        if new is None:
            continue
        values = {"path": new}
        if row.uri == row.path:  # an upload's uri is its path
            values["uri"] = new
        conn.execute(sa.update(images).where(images.c.id == row.id).values(**values))


def downgrade() -> None:
    pass  # relative paths stay valid for the code of revision 0002 (it resolved them against the collection)
