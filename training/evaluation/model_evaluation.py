"""Evaluating a model: embed splits, then classification and retrieval metrics — written once for ``msir-eval``,
``benchmarks/reproduce.py`` and the per-epoch validation of ``msir-train``.

:func:`evaluate_checkpoint` embeds and evaluates in one call; callers that embed once and slice (``msir-eval``'s
held-out split of a one-split dataset) or time each step call :func:`embed_split` and :func:`evaluate_embedded`,
the two halves it is made of. ``msir-index eval`` scores stored vectors, not a model: it calls the same retrieval
metrics (:func:`msir_core.retrieval.metrics.retrieval_metrics`) directly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models import PreprocessSpec
from msir_core.retrieval.metrics import retrieval_metrics
from msir_core.retrieval.probabilities import probabilities
from msir_core.retrieval.rerank import RerankConfig
from training.evaluation.classification import best_thresholds, classification_metrics
from training.evaluation.embed import embed_arrays

DEFAULT_KS = (1, 2, 5, 10)


@dataclass(frozen=True)
class Embedded:
    """A split as the model sees it: float32 embeddings ``[N, D]`` and logits ``[N, C]``, its labels (int ``[N]``
    or multi-hot ``[N, C]``) and, when known, its item ids."""

    embeddings: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, rows: np.ndarray | slice) -> Embedded:
        ids = None if self.ids is None else list(np.asarray(self.ids, dtype=object)[rows])
        return Embedded(
            np.ascontiguousarray(self.embeddings[rows]), self.logits[rows], self.labels[rows], ids
        )  # fmt: skip


def embed_split(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    spec: PreprocessSpec,
    *,
    batch_size: int,
    device: torch.device,
    ids: list[str] | None = None,
    progress: bool = True,
    description: str = "embedding",
) -> Embedded:
    """``model`` over uint8 ``images [N, C, H, W]`` (``embed_arrays`` uses eval mode and restores the mode after)."""
    emb, logits = embed_arrays(model, images, spec, batch_size, device, progress=progress, description=description)
    return Embedded(emb, logits, labels, ids)


def evaluate_embedded(
    queries: Embedded,
    database: Embedded | None,
    *,
    class_names: list[str],
    multi_label: bool,
    thresholds_from: Embedded | None = None,
    retrieval_queries: Embedded | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_self: bool = False,
    device: torch.device | None = None,
    rerank: RerankConfig | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``{"classification": ..., "retrieval": ...}`` of ``queries``: retrieval of ``retrieval_queries`` (default:
    the queries) against ``database``, none when it is None. Multi-label thresholds are tuned per label on
    ``thresholds_from`` when given. The same object as retrieval queries and database ranks each query without
    itself (leave-one-out). ``timings`` receives the seconds of each metric family."""
    thresholds = None
    if multi_label and thresholds_from is not None:
        thresholds = best_thresholds(thresholds_from.labels, probabilities(thresholds_from.logits, multi_label=True))
    started = time.perf_counter()
    out: dict[str, Any] = {
        "classification": classification_metrics(
            queries.labels, queries.logits, multi_label=multi_label, class_names=class_names, thresholds=thresholds
        )
    }
    if timings is not None:
        timings["classification_metrics"] = round(time.perf_counter() - started, 3)
    if database is not None:
        rq = queries if retrieval_queries is None else retrieval_queries
        started = time.perf_counter()
        out["retrieval"] = retrieval_metrics(
            rq.embeddings,
            rq.labels,
            database.embeddings,
            database.labels,
            ks=ks,
            multi_label=multi_label,
            exclude_self=exclude_self,
            query_ids=rq.ids,
            db_ids=database.ids,
            device=device,
            class_names=class_names,
            rerank=rerank,
        )
        if timings is not None:
            timings["retrieval_metrics"] = round(time.perf_counter() - started, 3)
    return out


def evaluate_checkpoint(
    model: nn.Module,
    spec: PreprocessSpec,
    queries: tuple[np.ndarray, np.ndarray],
    database: tuple[np.ndarray, np.ndarray] | None,
    *,
    class_names: list[str],
    multi_label: bool,
    batch_size: int,
    device: torch.device,
    thresholds_from: tuple[np.ndarray, np.ndarray] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed ``(images, labels)`` of the queries, the database and the threshold split, then
    :func:`evaluate_embedded`."""

    def embedded(split: tuple[np.ndarray, np.ndarray], what: str) -> Embedded:
        return embed_split(model, split[0], split[1], spec, batch_size=batch_size, device=device, progress=progress,
                           description=what)  # fmt: skip

    q = embedded(queries, "queries")
    db = None if database is None else embedded(database, "database")
    val = None if thresholds_from is None or not multi_label else embedded(thresholds_from, "thresholds")
    return evaluate_embedded(
        q, db, class_names=class_names, multi_label=multi_label, thresholds_from=val, ks=ks, device=device
    )


__all__ = ["DEFAULT_KS", "Embedded", "embed_split", "evaluate_checkpoint", "evaluate_embedded"]
