"""``--index auto``: the FAISS index type and options for N vectors of dimension d within a memory budget.

A pure function of (N, d, budget), so the decision is testable and recorded in the manifest (``index.auto``).
Byte estimates per vector, of the in-memory indexes :mod:`indexer.vectors.faiss_index` builds:

* ``flat``: 4d (float32) + ``ID_MAP_BYTES`` (IndexIDMap2's id array and reverse hash map);
* ``hnsw``: 4d + 2M x 4 (the graph links of level 0; upper levels add ~1/M more) + ``ID_MAP_BYTES``;
* ``ivfpq``: the IVF-PQ codes (m bytes + an 8-byte id) *plus* the exact float store it re-ranks with (4d +
  ``ID_MAP_BYTES``): this codebase's IVF-PQ trades memory for speed, it never needs less than flat.

Rules, from the measurements in README ("index comparison") and issue #26: up to ``FLAT_MAX`` vectors exact search
is fast enough and has recall 1, so ``flat``; above, IVF-PQ with exact re-ranking (recall@10 0.935-0.953 at 1M,
where HNSW at its defaults measured 0.668) when the budget holds it, else ``flat`` when that fits. HNSW is not
chosen: with its graph links it needs more memory than this IVF-PQ (2M x 4 = 256 bytes a vector at M=32 against
m + 8) and measured less recall at 1M. When nothing fits, the answer is a refusal naming the budget needed (the
exact float vectors are always kept, so no index type here needs less than ~4d bytes a vector; 4-bit fast-scan
codes without a float store are not implemented yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from indexer.errors import CollectionError
from indexer.vectors.faiss_index import DEFAULT_OPTIONS, default_m

ID_MAP_BYTES = 48
FLAT_MAX = 200_000
SLACK = 1.2  # allocator and temporary overhead over the estimate


@dataclass(frozen=True)
class IndexChoice:
    type: str
    options: dict[str, Any]
    estimated_bytes: int
    reason: str

    def record(self, n: int, dim: int, budget: int) -> dict[str, Any]:
        """What the manifest keeps of the decision."""
        return {"n": n, "dim": dim, "memory_budget": budget, "estimated_bytes": self.estimated_bytes,
                "reason": self.reason}  # fmt: skip


def estimated_bytes(index_type: str, n: int, dim: int, options: dict[str, Any] | None = None) -> int:
    opts = {**DEFAULT_OPTIONS[index_type], **(options or {})}
    exact = 4 * dim + ID_MAP_BYTES
    if index_type == "flat":
        per = exact
    elif index_type == "hnsw":
        per = exact + 2 * opts["M"] * 4 * (1 + 1 / opts["M"])
    else:
        per = exact + (opts["m"] or default_m(dim)) + 8
    return int(n * per * SLACK)


def choose_index(n: int, dim: int, memory_budget: int) -> IndexChoice:
    """The index for ``n`` vectors of dimension ``dim`` within ``memory_budget`` bytes (see the module text)."""
    if n < 0 or dim < 1 or memory_budget < 1:
        raise CollectionError(f"--index auto needs n >= 0, dim >= 1 and a positive memory budget (got {memory_budget})")
    sizes = {kind: estimated_bytes(kind, n, dim) for kind in ("flat", "hnsw", "ivfpq")}
    if n <= FLAT_MAX and sizes["flat"] <= memory_budget:
        return IndexChoice("flat", {}, sizes["flat"], f"{n} <= {FLAT_MAX} vectors: exact search")
    if sizes["ivfpq"] <= memory_budget and n > FLAT_MAX:
        return IndexChoice("ivfpq", {}, sizes["ivfpq"], f"{n} > {FLAT_MAX} vectors: IVF-PQ with exact re-ranking")
    if sizes["flat"] <= memory_budget:
        return IndexChoice("flat", {}, sizes["flat"], "only the flat index fits the budget: exact search")
    raise CollectionError(
        f"no index type fits --memory-budget {memory_budget} bytes for {n} vectors of dimension {dim}; "
        f"the smallest (flat) needs about {sizes['flat']} bytes"
    )


def parse_budget(text: str) -> int:
    """``8G``, ``512M``, ``1.5GiB``, ``1000000`` -> bytes (powers of 1024 for the suffixes)."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = raw[-1:] if raw[-1:] in units else ""
    try:
        value = float(raw[: len(raw) - len(suffix)])
    except ValueError:
        value = -1.0
    if value <= 0:
        raise CollectionError(f"--memory-budget {text!r}: expected a size such as 8G, 512M or 1000000 (bytes)")
    return int(value * units[suffix])
