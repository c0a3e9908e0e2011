"""Versioned JSON files (checkpoint metadata, collection manifests): ``{"format": NAME, "format_version": N, ...}``.

A reader accepts its own format at its version or older and refuses a newer one with a message that says to
upgrade, rather than misreading fields it does not know. Writers go through :mod:`msir_core.atomic`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_versioned_json(
    path: Path, *, fmt: str, max_version: int, error: type[Exception], what: str, unreadable: str
) -> dict[str, Any]:
    """The JSON object in ``path`` when its ``format`` is ``fmt`` and its ``format_version`` at most
    ``max_version``; otherwise ``error`` naming the file: ``unreadable`` (I/O or JSON), not ``what``, or too new."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: {unreadable} ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise error(f'{path}: not {what} (expected "format": "{fmt}")')
    version = raw.get("format_version")
    if not isinstance(version, int) or version > max_version:
        raise error(
            f"{path}: format_version {version!r} is newer than this msir understands ({max_version}); upgrade msir"
        )
    return raw


__all__ = ["read_versioned_json"]
