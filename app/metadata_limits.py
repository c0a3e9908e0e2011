"""Limits on the free-form ``metadata`` JSON stored with uploaded images, and serving stored rows safely.

An upload's metadata is bounded in bytes, nesting depth and key count (``MSIR_MAX_METADATA_*``): one deeply nested
object must not be able to break serialisation of every search whose top-k contains it. Rows written before the
limits existed, or by ``msir-index``, are still served: whatever lies deeper than :data:`SERVED_DEPTH` is replaced
by a marker instead of failing the response.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Deepest nesting ever put in a response (MSIR_MAX_METADATA_DEPTH may not exceed it); pydantic's own serialisation
# limit lies far above.
SERVED_DEPTH = 32
CLIPPED = "[nested deeper than {depth} levels: not served]"


class MetadataError(ValueError):
    """Metadata over a limit or not JSON; the message names the limit and its setting."""


@dataclass(frozen=True)
class MetadataLimits:
    max_bytes: int
    max_depth: int
    max_keys: int


def _no_constants(name: str) -> Any:
    raise MetadataError(f"{name} is not valid JSON (non-finite numbers cannot be stored)")


def parse(text: str, limits: MetadataLimits) -> Any:
    """JSON text -> value, refusing anything over ``limits`` before it is stored."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise MetadataError(f"{size:,} bytes exceeds the limit of {limits.max_bytes:,} bytes (MSIR_MAX_METADATA_BYTES)")
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except RecursionError as exc:
        raise MetadataError(_too_deep(limits)) from exc
    except json.JSONDecodeError as exc:
        raise MetadataError(f"not valid JSON ({exc.msg} at position {exc.pos})") from exc
    if value is None:  # JSON null: no metadata
        return {}
    check(value, limits)
    return value


def check(value: Any, limits: MetadataLimits, *, size: bool = False) -> None:
    """Refuse a parsed metadata value that could not be stored the same way on every database: non-finite numbers
    (``1e999`` parses as infinity; PostgreSQL's JSONB refuses it, SQLite would store a non-standard token), lone
    surrogates, and anything over the limits (``size``: measure its JSON text too, for values that did not come as
    text, such as a PATCH body)."""
    if size:
        try:
            text = json.dumps(value, allow_nan=False)
        except ValueError:
            text = ""  # a non-finite number: named below
        encoded = len(text.encode("utf-8", "surrogatepass"))
        if encoded > limits.max_bytes:
            raise MetadataError(
                f"{encoded:,} bytes exceeds the limit of {limits.max_bytes:,} bytes (MSIR_MAX_METADATA_BYTES)"
            )
    where = non_finite_at(value)
    if where is not None:
        raise MetadataError(
            f"{where}: non-finite numbers (NaN, Infinity, or a number too large for a double such as 1e999) "
            "cannot be stored; send a finite number, a string or null"
        )
    if not _encodable(value):
        raise MetadataError("holds a lone UTF-16 surrogate (a \\udXXX escape without its pair): not valid Unicode")
    depth, keys = measure(value)
    if depth > limits.max_depth:
        raise MetadataError(_too_deep(limits, depth))
    if keys > limits.max_keys:
        raise MetadataError(f"{keys:,} keys exceeds the limit of {limits.max_keys:,} keys (MSIR_MAX_METADATA_KEYS)")


def non_finite_at(value: Any) -> str | None:
    """The path (``metadata.a[2].b``) of the first non-finite number in a JSON value, or None."""
    stack: list[tuple[Any, str]] = [(value, "metadata")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, f"{path}.{k}") for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            return path
    return None


def _too_deep(limits: MetadataLimits, depth: int | None = None) -> str:
    nested = f"nested {depth} levels deep" if depth is not None else "nested too deep to parse"
    return f"{nested}, over the limit of {limits.max_depth} levels (MSIR_MAX_METADATA_DEPTH)"


def measure(value: Any) -> tuple[int, int]:
    """(nesting depth, object keys in all) of a JSON value, without recursion: a top-level object is depth 1."""
    depth = keys = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            keys += len(item)
            depth = max(depth, level + 1)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            depth = max(depth, level + 1)
            stack.extend((v, level + 1) for v in item)
    return depth, keys


def servable(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """A stored row's metadata as it can be put in a response: containers deeper than :data:`SERVED_DEPTH`
    become a marker string, non-finite numbers null, lone surrogates "?". Rows within the limits come back
    unchanged."""
    if not metadata:
        return {}
    if _serves_as_is(metadata):
        return dict(metadata)
    return _clip(metadata, 1)  # type: ignore[no-any-return]


def _serves_as_is(value: Any) -> bool:
    """No container deeper than :data:`SERVED_DEPTH`, no non-finite number, no lone surrogate: one pass without
    recursion that stops at the first problem (every answer runs it on each neighbour's metadata)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            if level > SERVED_DEPTH or not all(_utf8(k) for k in item if isinstance(k, str)):
                return False
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            if level > SERVED_DEPTH:
                return False
            stack.extend((v, level + 1) for v in item)
        elif isinstance(item, str):
            if not _utf8(item):
                return False
        elif isinstance(item, float) and not math.isfinite(item):
            return False
    return True


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalars(value: Any) -> Iterator[Any]:
    """Every key and leaf value of a JSON value, without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield from item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def _encodable(value: Any) -> bool:
    """No string holds a lone surrogate (JSON allows the escape; UTF-8, and so the response, does not)."""
    return all(_utf8(item) for item in _scalars(value) if isinstance(item, str))


def _text(value: str) -> str:
    # A lone surrogate (JSON allows the escape; UTF-8, and so the response, does not) becomes "?".
    return value if _utf8(value) else value.encode("utf-8", "replace").decode("utf-8")


def _clip(value: Any, level: int) -> Any:
    # Recursion is bounded by SERVED_DEPTH: nothing deeper is descended into.
    if isinstance(value, dict | list) and level > SERVED_DEPTH:
        return CLIPPED.format(depth=SERVED_DEPTH)
    if isinstance(value, dict):
        return {_text(str(k)): _clip(v, level + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v, level + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return _text(value)
    return value
