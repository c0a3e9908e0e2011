"""Per-epoch validation (and the final test) of ``msir-train``: :mod:`training.evaluation.model_evaluation` on a run's
decoded uint8 split, and the few headline numbers tracked per epoch."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from models import PreprocessSpec
from training.evaluation.model_evaluation import embed_split, evaluate_embedded
from training.prepared_data import EvalSplit

logger = logging.getLogger(__name__)


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The few numbers tracked per epoch (flat keys, usable as ``eval.best_metric``)."""
    macro = metrics.get("macro", {})
    if metrics.get("task") == "multi_label":
        out = {
            "subset_accuracy": metrics.get("subset_accuracy"),
            "micro_f1": metrics.get("micro_f1"),
            "f1_macro": macro.get("f1"),
            "auc_macro": macro.get("auc"),
        }
    else:
        out = {
            "accuracy": metrics.get("accuracy"),
            "balanced_accuracy": metrics.get("balanced_accuracy"),
            "f1_macro": macro.get("f1"),
            "auc_macro": macro.get("auc"),
        }
    retrieval = metrics.get("retrieval")
    if retrieval:
        out["map_at_all"] = retrieval.get("map_at_all")
        out["map_at_r"] = retrieval.get("map_at_r")
    return out


def default_best_metric(multi_label: bool) -> str:
    return "f1_macro" if multi_label else "accuracy"


def evaluate(
    model: nn.Module,
    split: EvalSplit,
    spec: PreprocessSpec,
    *,
    class_names: list[str],
    multi_label: bool,
    device: torch.device,
    batch_size: int,
    retrieval_max: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Classification metrics of ``split`` (+ retrieval mAP, leave-one-out within the first ``retrieval_max``
    images, when ``retrieval_max >= 2``). ``embed_arrays`` uses eval mode and restores the mode after."""
    embedded = embed_split(
        model, split.images, split.labels, spec, batch_size=batch_size, device=device, progress=progress
    )
    sample = None
    if retrieval_max >= 2 and len(split) >= 2:
        # Leave-one-out retrieval within the first images: the same object as queries and database.
        sample = embedded.rows(slice(0, min(retrieval_max, len(split))))
    out = evaluate_embedded(
        embedded, sample, retrieval_queries=sample, class_names=class_names, multi_label=multi_label
    )
    metrics = out["classification"]
    if sample is not None:
        metrics["retrieval"] = out["retrieval"]
    return metrics


__all__ = ["default_best_metric", "evaluate", "headline"]
