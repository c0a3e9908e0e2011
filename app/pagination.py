"""Opaque keyset cursors of ``GET /v1/images``.

A page ends at the last (sort key, id) it returned; the next page starts strictly after it. The listing is sorted by
id (ids are never reused), so the sort key is the id itself and a cursor is stable under concurrent inserts and
deletes: a row deleted before its page is read is skipped, a row inserted later gets a higher id and appears on a
later page, and nothing is repeated. The cursor is base64url (unpadded) of a small JSON object, validated by a
strict pydantic model on the way in, so a client that edits it gets a 422 naming the field, never a 500. It is not
signed: it holds nothing a client could not ask for with a filter.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_ID = 2**63 - 1  # FAISS and database ids are signed 64-bit
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"  # base64url without padding
CURSOR_MAX_LENGTH = 64  # the longest cursor (id 2**63-1) is 44 characters


class PageCursor(BaseModel):
    """What a cursor holds: the format version and the last id of the page it ends."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: int = Field(1, ge=1, le=1)
    id: int = Field(ge=0, le=MAX_ID)


class CursorError(ValueError):
    """A cursor this server did not write (edited, truncated or from another API version)."""


def encode_cursor(last_id: int) -> str:
    raw = PageCursor(id=int(last_id)).model_dump_json().encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> int:
    """The last id of the previous page, or :class:`CursorError` saying what is wrong."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CursorError("not base64url") from exc
    try:
        return PageCursor.model_validate_json(raw).id
    except ValidationError as exc:
        raise CursorError("not a cursor returned by this API") from exc
