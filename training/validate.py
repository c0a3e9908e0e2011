"""Validation and test evaluation of a model on decoded uint8 arrays, through ``training.evaluation``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from models import PreprocessSpec
from training.dataset import EvalSplit
from training.evaluation import classification_metrics, retrieval_metrics
from training.evaluation.embed import embed_arrays

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
    embeddings, logits = embed_arrays(model, split.images, spec, batch_size, device, progress=progress)
    metrics = classification_metrics(split.labels, logits, multi_label=multi_label, class_names=class_names)
    if retrieval_max >= 2 and len(split) >= 2:
        n = min(retrieval_max, len(split))
        emb = np.ascontiguousarray(embeddings[:n])
        metrics["retrieval"] = retrieval_metrics(
            emb, split.labels[:n], emb, split.labels[:n], multi_label=multi_label, class_names=class_names
        )
    return metrics


__all__ = ["default_best_metric", "evaluate", "headline"]
