"""``--index auto --memory-budget``: the chooser as a pure function, and one small rebuild through the CLI."""

from __future__ import annotations

import pytest

from indexer.errors import CollectionError
from indexer.vectors.auto import FLAT_MAX, choose_index, estimated_bytes, parse_budget

GIB = 1024**3


def test_small_collections_are_flat_large_ones_ivfpq() -> None:
    assert choose_index(50_000, 128, 8 * GIB).type == "flat"
    assert choose_index(FLAT_MAX, 128, 8 * GIB).type == "flat"
    large = choose_index(10_000_000, 128, 16 * GIB)
    assert large.type == "ivfpq" and large.estimated_bytes <= 16 * GIB
    assert large.record(10_000_000, 128, 16 * GIB)["memory_budget"] == 16 * GIB


def test_the_budget_decides_when_ivfpq_does_not_fit() -> None:
    n, dim = 1_000_000, 128
    flat, ivfpq = estimated_bytes("flat", n, dim), estimated_bytes("ivfpq", n, dim)
    assert flat < ivfpq  # the IVF-PQ here keeps the exact float store too
    assert choose_index(n, dim, ivfpq).type == "ivfpq"
    assert choose_index(n, dim, ivfpq - 1).type == "flat"
    with pytest.raises(CollectionError, match="needs about"):
        choose_index(n, dim, flat - 1)


def test_budget_parsing() -> None:
    assert parse_budget("8G") == 8 * GIB and parse_budget("512MiB") == 512 * 1024**2
    assert parse_budget("1000") == 1000 and parse_budget("1.5g") == int(1.5 * GIB)
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(CollectionError, match="--memory-budget"):
            parse_budget(bad)
