"""Re-ranking of cosine-similarity retrieval: αQE, DBA and k-reciprocal re-ranking, vectorised over queries.

One implementation for both users: ``msir-eval --rerank`` (msir_core.retrieval.metrics) and the search path
of the indexer (``msir-index search --rerank``, ``POST /v1/search`` ``rerank=``). Vectors are L2-normalised
``float32`` tensors; "neighbours" always means the nearest database vectors by inner product.

- **αQE**, average query expansion with α-weights (Radenović, Tolias, Chum, TPAMI 2019, §"αQE"): the query is
  replaced by ``normalise(q + Σ_{i=1..n} max(s_i, 0)^α d_i)`` over its ``n`` nearest database vectors ``d_i``
  (similarities ``s_i``), then the database is searched again with it.
- **DBA**, database-side augmentation with the same α-weighting (ibid.; Arandjelović & Zisserman 2012): each
  database vector is replaced by ``normalise(Σ_{i=0..n} max(s_i, 0)^α d_i)`` over its ``n + 1`` nearest database
  vectors (itself first, with weight 1). The query is scored against the augmented vectors of its shortlist.
- **k-reciprocal** re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017), the published algorithm (Jaccard distance of
  k-reciprocal sets with the ½k1 expansion, Gaussian weights, local query expansion over k2 neighbours, mixed
  with the original distance by λ) run per query on the set {query} ∪ shortlist. The published code runs it on
  all probes and the whole gallery at once (O(N²) memory: 3.6·10⁹ entries for 10k × 50k); restricting each
  query's neighbourhoods to its own shortlist is our choice, so that it costs O(S²) per query and works on a
  live index.

αQE re-searches the whole database. DBA and k-reciprocal re-order the top ``shortlist`` results of the plain
search; items beyond the shortlist keep their order after it. The neighbour search is a parameter
(:data:`NeighbourFn`): an exact matmul in evaluation, the FAISS index in the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

RerankMethod = Literal["none", "aqe", "dba", "kreciprocal"]
RERANK_METHODS: tuple[str, ...] = ("none", "aqe", "dba", "kreciprocal")

# vectors [M, D] and n -> (similarities [M, n], neighbour vectors [M, n, D]), best first.
NeighbourFn = Callable[[Tensor, int], tuple[Tensor, Tensor]]


class RerankError(ValueError):
    """Invalid re-ranking settings; the message names the setting and the accepted values."""


@dataclass(frozen=True)
class RerankConfig:
    """Which re-ranking and its parameters; defaults are the papers' (αQE/DBA: α = 3; k-reciprocal: k1 = 20,
    k2 = 6, λ = 0.3) with n = 10 neighbours for αQE/DBA and a 100-item shortlist (our choices)."""

    method: RerankMethod = "none"
    shortlist: int = 100
    qe_neighbours: int = 10
    alpha: float = 3.0
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        if self.method not in RERANK_METHODS:
            raise RerankError(f"rerank must be one of {', '.join(RERANK_METHODS)}, got {self.method!r}")
        for name in ("shortlist", "qe_neighbours", "k1", "k2"):
            if int(getattr(self, name)) < 1:
                raise RerankError(f"rerank {name} must be >= 1, got {getattr(self, name)}")
        if self.alpha < 0:
            raise RerankError(f"rerank alpha must be >= 0, got {self.alpha}")
        if not 0.0 <= self.lambda_value <= 1.0:
            raise RerankError(f"rerank lambda_value must be in [0, 1], got {self.lambda_value}")

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def reorders_shortlist(self) -> bool:
        return self.method in ("dba", "kreciprocal")

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"method": self.method}
        if self.method in ("aqe", "dba"):
            out.update(neighbours=self.qe_neighbours, alpha=self.alpha)
        if self.method == "kreciprocal":
            out.update(k1=self.k1, k2=self.k2, lambda_value=self.lambda_value)
        if self.reorders_shortlist:
            out["shortlist"] = self.shortlist
        return out


def alpha_weighted_sum(vectors: Tensor, sims: Tensor, neighbours: Tensor, alpha: float) -> Tensor:
    """``normalise(v + Σ_i max(s_i, 0)^α n_i)``: ``vectors [M, D]``, ``sims [M, n]``, ``neighbours [M, n, D]``.

    Negative similarities get weight 0 (``x^α`` of a negative number is undefined for non-integer α).
    """
    weights = sims.clamp(min=0).pow(alpha)
    return F.normalize(vectors + torch.einsum("mn,mnd->md", weights, neighbours), dim=1)


def expand_queries(queries: Tensor, neighbours: NeighbourFn, cfg: RerankConfig) -> Tensor:
    """αQE: the expanded queries ``[B, D]`` (search the database again with them)."""
    sims, vecs = neighbours(queries, cfg.qe_neighbours)
    return alpha_weighted_sum(queries, sims, vecs, cfg.alpha)


def augment_database(vectors: Tensor, neighbours: NeighbourFn, cfg: RerankConfig) -> Tensor:
    """DBA: augmented database vectors ``[M, D]``. ``neighbours`` must search the database the vectors belong to,
    so each vector's first neighbour is itself (weight ``1^α = 1``), as in the published method."""
    sims, vecs = neighbours(vectors, cfg.qe_neighbours + 1)
    return F.normalize(torch.einsum("mn,mnd->md", sims.clamp(min=0).pow(cfg.alpha), vecs), dim=1)


def k_reciprocal_scores(
    queries: Tensor, candidates: Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> Tensor:
    """k-reciprocal re-ranking scores ``[B, S]`` (higher is better) of each query's shortlist.

    ``queries [B, D]`` and ``candidates [B, S, D]``, L2-normalised. Per query, the published algorithm runs on
    the ``M = S + 1`` points {query, candidates}: squared Euclidean distances (``2 - 2 cos``) divided by each
    column's maximum, k-reciprocal sets ``R(i, k1)`` expanded by the ``R(c, round(k1/2))`` that share more than
    two thirds of their members with it, Gaussian weights ``exp(-d)`` normalised per row, local query expansion
    (mean of the rows of the k2 nearest points), then Jaccard distance ``1 - Σmin / (2 - Σmin)`` mixed with the
    original distance: ``final = (1 - λ) jaccard + λ original``. Returns ``-final`` of the candidates.
    """
    b, s, _ = candidates.shape
    m = s + 1
    pts = torch.cat([queries.unsqueeze(1), candidates], dim=1)  # [B, M, D]
    dist = (2.0 - 2.0 * pts @ pts.transpose(1, 2)).clamp(min=0)
    # The published code divides by each column's maximum, then transposes: dist[i, j] = d(i, j) / max_r d(r, i).
    colmax = dist.amax(dim=1, keepdim=True).clamp(min=1e-12)
    dist = (dist / colmax).transpose(1, 2)
    # Stable ascending order (ties: lower index first); each point is its own first neighbour (distance 0).
    rank = torch.sort(dist, dim=2, stable=True).indices
    rank = _self_first(rank)

    def reciprocal(k: int) -> Tensor:
        top = torch.zeros((b, m, m), dtype=torch.bool, device=pts.device)
        top.scatter_(2, rank[:, :, : min(k + 1, m)], True)  # j among the k+1 nearest of i (i itself included)
        return top & top.transpose(1, 2)

    r_full = reciprocal(k1)
    r_half = reciprocal(round(k1 / 2))
    rf, rh = r_full.float(), r_half.float()
    # For every i and candidate c in R(i, k1): |R(c, k1/2) ∩ R(i, k1)| > 2/3 |R(c, k1/2)| adds R(c, k1/2) to i's set.
    shared = rf @ rh.transpose(1, 2)  # [B, i, c]
    keep = r_full & (shared > (2.0 / 3.0) * rh.sum(dim=2).unsqueeze(1))
    expanded = r_full | ((keep.float() @ rh) > 0)
    weights = torch.where(expanded, torch.exp(-dist), torch.zeros((), device=pts.device))
    v = weights / weights.sum(dim=2, keepdim=True)
    if k2 != 1:
        nearest = rank[:, :, : min(k2, m)]  # [B, M, k2]
        v = torch.gather(v.unsqueeze(1).expand(b, m, m, m), 2, nearest.unsqueeze(-1).expand(-1, -1, -1, m)).mean(2)
    # Jaccard distance of the query (row 0) to every point.
    inter = torch.minimum(v[:, :1, :], v).sum(dim=2)  # [B, M]
    jaccard = 1.0 - inter / (2.0 - inter)
    final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:, 0, :]
    return -final[:, 1:]


def _self_first(rank: Tensor) -> Tensor:
    """Put each point first in its own neighbour list (an exact duplicate at distance 0 may sort before it)."""
    b, m, _ = rank.shape
    me = torch.arange(m, device=rank.device).view(1, m, 1)
    if bool((rank[:, :, :1] == me).all()):
        return rank
    others = rank[rank != me.expand(b, m, m)].view(b, m, m - 1)
    return torch.cat([me.expand(b, m, 1), others], dim=2)


def rerank_shortlist(
    queries: Tensor,
    scores: Tensor,
    candidates: Tensor,
    cfg: RerankConfig,
    neighbours: NeighbourFn | None = None,
    *,
    augmented: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Re-order each query's shortlist: ``(order [B, S], new_scores [B, S])``, best first.

    ``scores [B, S]`` and ``candidates [B, S, D]`` are the plain search's results; padded slots (no result) must
    carry ``-inf`` scores and stay last. DBA needs ``neighbours`` (a search of the database) to augment the
    candidates, or their already augmented vectors ``augmented [B, S, D]`` (evaluation augments the whole
    database once); k-reciprocal needs neither.
    """
    valid = torch.isfinite(scores)
    if cfg.method == "dba":
        if augmented is None:
            if neighbours is None:
                raise RerankError("DBA needs a neighbour search of the database or the augmented candidates")
            b, s, d = candidates.shape
            flat = candidates.reshape(b * s, d)
            rows = valid.reshape(-1).nonzero().squeeze(1)
            aug = flat.clone()
            if rows.numel():
                aug[rows] = augment_database(flat[rows], neighbours, cfg)
            augmented = aug.view(b, s, d)
        new = torch.einsum("bd,bsd->bs", queries, augmented)
    elif cfg.method == "kreciprocal":
        new = k_reciprocal_scores(queries, candidates, cfg.k1, cfg.k2, cfg.lambda_value)
    else:
        raise RerankError(f"rerank_shortlist re-orders for dba and kreciprocal, not {cfg.method!r}")
    new = torch.where(valid, new, torch.full_like(new, -torch.inf))
    new_scores, order = torch.sort(new, dim=1, descending=True, stable=True)
    return order, new_scores


def exact_neighbours(database: Tensor, batch_size: int = 1024) -> NeighbourFn:
    """A :data:`NeighbourFn` over an in-memory database ``[N, D]`` (exact inner product, batched matmul)."""

    def search(vectors: Tensor, n: int) -> tuple[Tensor, Tensor]:
        n = min(n, database.shape[0])
        sims_out, idx_out = [], []
        for start in range(0, vectors.shape[0], batch_size):
            top = torch.topk(vectors[start : start + batch_size] @ database.T, n, dim=1)
            sims_out.append(top.values)
            idx_out.append(top.indices)
        idx = torch.cat(idx_out)
        return torch.cat(sims_out), database[idx]

    return search


__all__ = [
    "RERANK_METHODS",
    "NeighbourFn",
    "RerankConfig",
    "RerankError",
    "RerankMethod",
    "alpha_weighted_sum",
    "augment_database",
    "exact_neighbours",
    "expand_queries",
    "k_reciprocal_scores",
    "rerank_shortlist",
]
