"""app.metadata_limits.servable: a stored row's metadata as a response can carry it, whatever was stored."""

from __future__ import annotations

import math

from app.metadata_limits import CLIPPED, SERVED_DEPTH, servable


def test_metadata_within_the_limits_comes_back_unchanged_as_a_copy() -> None:
    stored = {"item_id": "airplane/0000.jpg", "n": 3, "ok": True, "x": 0.5, "tags": ["a", "é"], "sub": {"k": None}}
    served = servable(stored)
    assert served == stored and served is not stored
    assert servable(None) == {} and servable({}) == {}


def test_what_a_response_cannot_carry_is_replaced() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(SERVED_DEPTH + 3):
        node["d"] = {}
        node = node["d"]  # type: ignore[assignment]
    served = servable({"deep": deep, "nan": math.nan, "inf": [1.0, math.inf], "bad\ud800key": "lone \udc00 surrogate"})
    assert served["nan"] is None and served["inf"] == [1.0, None]
    assert served["bad?key"] == "lone ? surrogate"
    level, depth = served["deep"], 2
    while isinstance(level, dict):
        level, depth = level["d"], depth + 1
    assert level == CLIPPED.format(depth=SERVED_DEPTH) and depth == SERVED_DEPTH + 1
