"""Retrieval metrics over the full ranking of a database.

Relevance: a database item is relevant to a query when it has the same class (single-label) or shares at least
one label with it (multi-label). Embeddings are L2-normalised here; similarity is the inner product.

Ranking and ties: each query ranks the whole database by descending similarity with a *stable* sort, so items
with equal scores keep ascending database-index order. The ranking, and every metric, is therefore a pure
function of the inputs: the same for any ``batch_size``. With ties this differs from scikit-learn's
``average_precision_score``, which scores a tied group as one step.

Per query, with R = number of relevant database items (the query itself excluded when it is in the database):

- ``P@K``  relevant items in the top K / K (every query; K larger than the database still divides by K)
- ``R@K``  relevant items in the top K / R (information-retrieval recall)
- ``hit@K`` 1 when the top K holds any relevant item: the "Recall@K" of deep metric learning papers
- ``AP``   mean over the relevant items of the precision at their rank (mAP@all, over the full ranking)
- ``AP@R`` (1/R) * sum of precision at rank i over the relevant items in the top R (Musgrave et al., 2020)

Queries with no relevant item (R = 0) have undefined R@K, hit@K, AP and AP@R: they are counted in
``queries_without_relevant`` and left out of those averages; they stay in P@K and the kNN scores.

Cost: for each batch of B queries, one B x N matmul, one full sort of the B x N scores
(:mod:`msir_core.retrieval.ranking`) and a gather of the B x N relevance matrix; peak extra memory is about
15 bytes * B * N (B=1024, N=50,000: ~0.8 GB). Average precision comes from the positions of the relevant items
(``nonzero`` of the sorted relevance), with no Python loop over queries or ranks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from msir_core.retrieval.knn import vote_multi_label, vote_single_label
from msir_core.retrieval.ranking import RankWorkspace, rank_rows
from msir_core.retrieval.rerank import (
    RerankConfig,
    alpha_weighted_sum,
    augment_database,
    exact_neighbours,
    rerank_shortlist,
)

__all__ = ["retrieval_metrics"]

logger = logging.getLogger(__name__)

EXCLUDED_NOTE = (
    "queries without any relevant database item are excluded from recall_at_k, hit_rate_at_k, map_at_all and "
    "map_at_r (and their per-class values); they are included in precision_at_k and the kNN scores"
)
DEFINITIONS = {
    "relevance": "same class (single-label) or at least one shared label (multi-label)",
    "ranking": "descending inner product of L2-normalised embeddings; ties in ascending database index",
    "precision_at_k": "relevant items in the top K / K",
    "recall_at_k": "relevant items in the top K / R, R = relevant items in the database for the query",
    "hit_rate_at_k": "share of queries with a relevant item in the top K (metric-learning Recall@K)",
    "map_at_all": "mean over queries of average precision over the full ranking",
    "map_at_r": "mean over queries of (1/R) * sum of precision at each relevant rank within the top R",
    "knn": "vote of the top-K neighbours; single-label: majority, ties by summed similarity, then class "
    "index; "
    "multi-label: labels carried by at least half of the neighbours (sample F1, empty vs empty = 1)",
}


@dataclass
class _PerQuery:
    """Per-query results; every aggregate is computed from these once, whatever the batch size."""

    n_relevant: np.ndarray  # int64 [Q]
    ap: np.ndarray  # float64 [Q], NaN without relevant items
    ap_at_r: np.ndarray  # float64 [Q], NaN without relevant items
    hits: np.ndarray  # int64 [Q, len(ks)]: relevant items in the top K
    knn: np.ndarray  # int64 [Q, len(ks)] predicted class, or bool [Q, len(ks), C] predicted label sets


def retrieval_metrics(
    query_emb: np.ndarray | Tensor,
    query_labels: np.ndarray | Tensor | Sequence[int],
    db_emb: np.ndarray | Tensor,
    db_labels: np.ndarray | Tensor | Sequence[int],
    ks: Sequence[int] = (1, 2, 5, 10),
    *,
    multi_label: bool = False,
    exclude_self: bool = False,
    query_ids: Sequence[str] | None = None,
    db_ids: Sequence[str] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    class_names: Sequence[str] | None = None,
    rerank: RerankConfig | None = None,
) -> dict:
    """Retrieval quality of ``query_emb`` against ``db_emb`` (definitions in the module docstring).

    Labels are int ``[N]`` (single-label) or 0/1 ``[N, C]`` (multi-label). The query itself is excluded
    from its own ranking when ``query_emb is db_emb`` (row i is database item i), or when
    ``exclude_self=True`` with ``query_ids``/``db_ids`` (database items whose id equals the query's).
    ``class_names`` fixes the number of classes and names the per-class rows; otherwise classes are numbered
    from the labels. ``device``: where the matmul and sort run (default CPU). Returns plain
    JSON-serialisable types; undefined values are ``None``. ``rerank``: re-rank every query's results first
    (:mod:`msir_core.retrieval.rerank`; DBA augments the whole database once, before ranking).
    """
    ks_list = _check_ks(ks)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    same_array = query_emb is db_emb
    q = _normalised(query_emb, "query_emb", dev)
    d = q if same_array else _normalised(db_emb, "db_emb", dev)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query_emb has dimension {q.shape[1]} but db_emb has {d.shape[1]}")
    if q.shape[0] == 0 or d.shape[0] == 0:
        raise ValueError(f"need at least one query and one database item, got {q.shape[0]} and {d.shape[0]}")
    ql = _labels(query_labels, "query_labels", q.shape[0], multi_label)
    dl = _labels(db_labels, "db_labels", d.shape[0], multi_label)
    num_classes = _num_classes(ql, dl, multi_label, class_names)
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    self_cols, how = _self_columns(same_array, exclude_self, query_ids, db_ids, q.shape[0], d.shape[0])

    started = time.perf_counter()
    hook, prepare_seconds = None, 0.0
    if rerank is not None and rerank.active:
        hook = _reranker(rerank, d, batch_size)
        prepare_seconds = time.perf_counter() - started  # DBA augments the whole database here, once
    per = _rank_all(q, ql, d, dl, ks_list, self_cols, batch_size, multi_label, num_classes, hook)
    logger.info(
        "retrieval metrics: %d queries x %d database items in %.1f s",
        q.shape[0],
        d.shape[0],
        time.perf_counter() - started,
    )
    result = {
        "num_queries": int(q.shape[0]),
        "num_database": int(d.shape[0]),
        "embedding_dim": int(q.shape[1]),
        "multi_label": multi_label,
        "num_classes": num_classes,
        "ks": ks_list,
        "self_excluded": how,
    }
    if rerank is not None and rerank.active:
        result["rerank"] = {**rerank.describe(), "database_seconds": round(prepare_seconds, 3)}
    result.update(_summarise(per, ql, ks_list, multi_label, names))
    return result


def _rank_all(
    q: Tensor,
    ql: np.ndarray,
    d: Tensor,
    dl: np.ndarray,
    ks: list[int],
    self_cols: np.ndarray | None,
    batch_size: int,
    multi_label: bool,
    num_classes: int,
    rerank: Callable[[Tensor, Tensor], None] | None = None,
) -> _PerQuery:
    nq, nd = q.shape[0], d.shape[0]
    kmax = min(max(ks), nd)
    dev = q.device
    # Labels live on the device as int64 (single) or float32 multi-hot, for comparison and matmul.
    ql_t = torch.as_tensor(ql, device=dev, dtype=torch.float32 if multi_label else torch.int64)
    dl_t = torch.as_tensor(dl, device=dev, dtype=torch.float32 if multi_label else torch.int64)
    self_t = torch.as_tensor(self_cols, device=dev) if self_cols is not None else None

    n_relevant = np.zeros(nq, dtype=np.int64)
    ap = np.full(nq, np.nan)
    ap_at_r = np.full(nq, np.nan)
    hits = np.zeros((nq, len(ks)), dtype=np.int64)
    knn = np.zeros((nq, len(ks), num_classes), dtype=bool) if multi_label else np.zeros((nq, len(ks)), np.int64)

    rows_max = min(batch_size, nq)
    on_cpu = dev.type == "cpu"
    # Reused from batch to batch on CPU: first-touching fresh B x N memory costs about as much as the sort.
    workspace = RankWorkspace(rows_max, nd) if on_cpu else None
    sims_buf = torch.empty((rows_max, nd), dtype=torch.float32) if on_cpu else None
    relevant_buf = torch.empty((rows_max, nd), dtype=torch.bool) if on_cpu else None
    sorted_buf = torch.empty((rows_max, nd), dtype=torch.bool) if on_cpu else None

    with torch.inference_mode():
        for start in range(0, nq, batch_size):
            stop = min(start + batch_size, nq)
            b = stop - start
            sims = sims_buf[:b] if sims_buf is not None else None
            relevant = relevant_buf[:b] if relevant_buf is not None else None
            if multi_label:
                # The shared-label count goes through the similarity buffer before the similarities do.
                shared = torch.matmul(ql_t[start:stop], dl_t.T, out=sims)
                relevant = torch.gt(shared, 0, out=relevant)
            else:
                relevant = torch.eq(ql_t[start:stop, None], dl_t[None, :], out=relevant)
            sims = torch.matmul(q[start:stop], d.T, out=sims)
            if self_t is not None:
                cols = self_t[start:stop]
                rows = torch.nonzero(cols >= 0).squeeze(1)
                # -inf sends the query itself to the end of its ranking; it is never relevant.
                sims[rows, cols[rows]] = -torch.inf
                relevant[rows, cols[rows]] = False
            if rerank is not None:
                rerank(sims, q[start:stop])
                if self_t is not None:
                    sims[rows, cols[rows]] = -torch.inf  # αQE recomputes every score
            order, top_scores = rank_rows(sims, kmax, workspace)
            top_idx = order[:, :kmax].clone()
            rel_sorted = torch.gather(relevant, 1, order, out=sorted_buf[:b] if sorted_buf is not None else None)
            del order

            top_cum = rel_sorted[:, :kmax].cumsum(dim=1)
            for j, k in enumerate(ks):
                hits[start:stop, j] = top_cum[:, min(k, nd) - 1].cpu().numpy()
            rows_nz, pos_nz = (t.cpu().numpy() for t in torch.nonzero(rel_sorted, as_tuple=True))
            n_rel = np.bincount(rows_nz, minlength=stop - start)
            n_relevant[start:stop] = n_rel
            ap[start:stop], ap_at_r[start:stop] = _average_precision(rows_nz, pos_nz, n_rel)

            for j, k in enumerate(ks):
                knn[start:stop, j] = _knn_vote(dl_t[top_idx[:, :k]], top_scores[:, :k], multi_label, num_classes)
    return _PerQuery(n_relevant, ap, ap_at_r, hits, knn)


def _reranker(cfg: RerankConfig, d: Tensor, batch_size: int) -> Callable[[Tensor, Tensor], None]:
    """Rewrite a batch's ``[B, N]`` scores in place so that ranking them gives the re-ranked order.

    αQE: the scores of the expanded queries. DBA / k-reciprocal: the shortlist is moved above every other item
    (its new scores + 4, above any cosine) in its new order; the rest keep their order.
    """
    search = exact_neighbours(d, batch_size)
    augmented = augment_database(d, search, cfg) if cfg.method == "dba" else None
    shortlist = min(cfg.shortlist, d.shape[0])

    def apply(sims: Tensor, q: Tensor) -> None:
        if cfg.method == "aqe":
            top = torch.topk(sims, min(cfg.qe_neighbours, d.shape[0]), dim=1)
            expanded = alpha_weighted_sum(q, top.values, d[top.indices], cfg.alpha)
            torch.matmul(expanded, d.T, out=sims)
            return
        top = torch.topk(sims, shortlist, dim=1)
        aug = augmented[top.indices] if augmented is not None else None
        order, new_scores = rerank_shortlist(q, top.values, d[top.indices], cfg, augmented=aug)
        sims.scatter_(1, torch.gather(top.indices, 1, order), new_scores + 4.0)

    return apply


def _knn_vote(neighbour_labels: Tensor, scores: Tensor, multi_label: bool, num_classes: int) -> np.ndarray:
    """kNN predictions of a batch; an excluded query-self (score -inf) does not vote."""
    labels, sims = neighbour_labels.cpu().numpy(), scores.detach().cpu().double().numpy()
    valid = np.isfinite(sims)
    if multi_label:
        _, predicted = vote_multi_label(labels, valid)
    else:
        _, predicted = vote_single_label(labels, sims, valid, num_classes)
    return predicted


def _average_precision(rows: np.ndarray, pos: np.ndarray, n_rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and AP@R per query from the (row, 0-based rank) pairs of relevant items, in row-major order."""
    first = np.cumsum(n_rel) - n_rel
    kth_relevant = np.arange(rows.shape[0]) - first[rows] + 1
    precision = kth_relevant / (pos + 1.0)
    batch = n_rel.shape[0]
    # bincount adds each row's terms in rank order, so a query's AP does not depend on its batch neighbours.
    total = np.bincount(rows, weights=precision, minlength=batch)
    in_top_r = pos < n_rel[rows]
    total_r = np.bincount(rows[in_top_r], weights=precision[in_top_r], minlength=batch)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.where(n_rel > 0, n_rel, np.nan)
        return total / denom, total_r / denom


def _summarise(per: _PerQuery, ql: np.ndarray, ks: list[int], multi_label: bool, names: list[str]) -> dict:
    has_rel = per.n_relevant > 0
    ks_arr = np.asarray(ks, dtype=np.float64)
    precision = per.hits / ks_arr
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(has_rel[:, None], per.hits / per.n_relevant[:, None], np.nan)
    hit = np.where(has_rel[:, None], (per.hits > 0).astype(np.float64), np.nan)

    out: dict = {
        "precision_at_k": _by_k(ks, [_mean(precision[:, j]) for j in range(len(ks))]),
        "recall_at_k": _by_k(ks, [_mean(recall[:, j]) for j in range(len(ks))]),
        "hit_rate_at_k": _by_k(ks, [_mean(hit[:, j]) for j in range(len(ks))]),
        "map_at_all": _mean(per.ap),
        "map_at_r": _mean(per.ap_at_r),
    }
    if multi_label:
        truth = ql.astype(bool)
        f1 = [_sample_f1(per.knn[:, j], truth) for j in range(len(ks))]
        exact = [(per.knn[:, j] == truth).all(axis=1).astype(np.float64) for j in range(len(ks))]
        out["knn_sample_f1"] = _by_k(ks, [_mean(v) for v in f1])
        out["knn_subset_accuracy"] = _by_k(ks, [_mean(v) for v in exact])
        members = truth
    else:
        out["knn_accuracy"] = _by_k(ks, [_mean((per.knn[:, j] == ql).astype(np.float64)) for j in range(len(ks))])
        members = ql[:, None] == np.arange(len(names))[None, :]
    out["queries_without_relevant"] = int((~has_rel).sum())
    out["queries_with_relevant"] = int(has_rel.sum())
    out["note"] = EXCLUDED_NOTE
    out["per_class"] = _per_class(members, per, precision, recall, hit, ks, names, multi_label)
    out["definitions"] = DEFINITIONS
    return out


def _per_class(
    members: np.ndarray,
    per: _PerQuery,
    precision: np.ndarray,
    recall: np.ndarray,
    hit: np.ndarray,
    ks: list[int],
    names: list[str],
    multi_label: bool,
) -> dict:
    """Means over the queries of each class (multi-label: over the queries carrying the label)."""
    columns = range(members.shape[1])
    return {
        "class_names": names,
        "grouping": "queries carrying the label" if multi_label else "queries of the class",
        "num_queries": [int(members[:, c].sum()) for c in columns],
        "queries_without_relevant": [int((members[:, c] & (per.n_relevant == 0)).sum()) for c in columns],
        "precision_at_k": {str(k): [_mean(precision[members[:, c], j]) for c in columns] for j, k in enumerate(ks)},
        "recall_at_k": {str(k): [_mean(recall[members[:, c], j]) for c in columns] for j, k in enumerate(ks)},
        "hit_rate_at_k": {str(k): [_mean(hit[members[:, c], j]) for c in columns] for j, k in enumerate(ks)},
        "ap": [_mean(per.ap[members[:, c]]) for c in columns],
        "ap_at_r": [_mean(per.ap_at_r[members[:, c]]) for c in columns],
    }


def _sample_f1(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    both = (predicted & truth).sum(axis=1)
    size = predicted.sum(axis=1) + truth.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(size > 0, 2.0 * both / size, 1.0)


def _mean(values: np.ndarray) -> float | None:
    """Mean over the defined (non-NaN) values; None when there are none."""
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return None
    return float(defined.mean())


def _by_k(ks: list[int], values: list[float | None]) -> dict[str, float | None]:
    return {str(k): v for k, v in zip(ks, values, strict=True)}


def _check_ks(ks: Sequence[int]) -> list[int]:
    values = list(ks)
    if not values or any(isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 for k in values):
        raise ValueError(f"ks must be positive integers, got {values}")
    return sorted({int(k) for k in values})


def _normalised(emb: np.ndarray | Tensor, name: str, device: torch.device) -> Tensor:
    x = emb.detach() if isinstance(emb, Tensor) else torch.from_numpy(np.asarray(emb))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold numbers, got dtype {x.dtype}")
    x = x.to(device=device, dtype=torch.float32)
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name} has non-finite values (first in row {bad})")
    # An all-zero row stays zero (similarity 0 to everything) instead of becoming NaN.
    return torch.nn.functional.normalize(x, dim=1)


def _labels(labels: np.ndarray | Tensor | Sequence[int], name: str, n: int, multi_label: bool) -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if multi_label:
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(f"{name} must be 0/1 [{n}, C] for multi_label=True, got shape {arr.shape}")
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must contain only 0 and 1 for multi_label=True")
        return arr.astype(np.uint8)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be int [{n}] class indices, got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iub" and not np.array_equal(arr, np.round(arr))):
        raise ValueError(f"{name} must be integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has a negative class index {int(arr.min())}")
    return arr


def _num_classes(ql: np.ndarray, dl: np.ndarray, multi_label: bool, class_names: Sequence[str] | None) -> int:
    if multi_label:
        if ql.shape[1] != dl.shape[1]:
            raise ValueError(f"query_labels have {ql.shape[1]} labels but db_labels have {dl.shape[1]}")
        found = ql.shape[1]
        if class_names is not None and len(class_names) != found:
            raise ValueError(f"class_names has {len(class_names)} names but the labels have {found} columns")
        return found
    found = int(max(ql.max(initial=-1), dl.max(initial=-1))) + 1
    if class_names is None:
        return max(found, 1)
    if found > len(class_names):
        raise ValueError(f"class index {found - 1} is out of range for {len(class_names)} class_names")
    return len(class_names)


def _self_columns(
    same_array: bool,
    exclude_self: bool,
    query_ids: Sequence[str] | None,
    db_ids: Sequence[str] | None,
    nq: int,
    nd: int,
) -> tuple[np.ndarray | None, str | None]:
    """Database column of each query's own item (-1 when absent) and how it was found."""
    if exclude_self and query_ids is not None and db_ids is not None:
        if len(query_ids) != nq or len(db_ids) != nd:
            raise ValueError(
                f"query_ids/db_ids have {len(query_ids)}/{len(db_ids)} entries, expected {nq}/{nd} "
                "(one per embedding row)"
            )
        position: dict[str, int] = {}
        for i, item_id in enumerate(db_ids):
            if item_id in position:
                raise ValueError(f"db_ids must be unique: {item_id!r} at rows {position[item_id]} and {i}")
            position[item_id] = i
        return np.asarray([position.get(i, -1) for i in query_ids], dtype=np.int64), "by id"
    if same_array:
        logger.info("query and database are the same array: each query's own row is excluded")
        return np.arange(nq, dtype=np.int64), "same array"
    if exclude_self:
        raise ValueError(
            "exclude_self=True needs query_ids and db_ids (or the same array passed as query_emb and db_emb)"
        )
    return None, None
