"""Classification metrics from model scores, single- and multi-label, as plain JSON-serialisable dicts.

Counting metrics follow scikit-learn (``precision_recall_fscore_support`` with ``zero_division=0``,
``confusion_matrix``, ``roc_auc_score``), which computes them; this module chooses the inputs and the layout.

- Single-label: the prediction is the argmax of the scores (lowest index on ties). ROC AUC is one-vs-rest on
  the softmax probability of each class; a class with no positive (or no negative) sample has AUC ``None`` and
  the macro AUC averages the classes that have one. The confusion matrix has rows = true class, normalised by
  row (a class without samples is a row of zeros).
- Multi-label: sigmoid probabilities; a label is predicted when its probability is >= the threshold (0.5, and
  optionally per-label thresholds from :func:`best_thresholds`, chosen on validation data).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from msir_core.retrieval.probabilities import probabilities

__all__ = ["best_thresholds", "classification_metrics"]

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


def best_thresholds(y_true_val: np.ndarray, probs_val: np.ndarray) -> list[float]:
    """Per-label threshold maximising F1 on validation data (multi-label).

    ``y_true_val``: 0/1 ``[N, C]``; ``probs_val``: probabilities ``[N, C]``. A label is predicted when its
    probability is >= the threshold, and each threshold is one of that label's validation probabilities; among
    equally good thresholds the largest wins. A label without positive validation samples keeps 0.5.
    """
    y, p = _check_multi_label(y_true_val, probs_val, "y_true_val", "probs_val")
    thresholds: list[float] = []
    for c in range(y.shape[1]):
        if not y[:, c].any():
            logger.info("label %d has no positive validation sample; keeping threshold %.1f", c, DEFAULT_THRESHOLD)
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cut = precision_recall_curve(y[:, c], p[:, c])
        # The last (precision=1, recall=0) point has no threshold.
        precision, recall = precision[:-1], recall[:-1]
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        best = np.flatnonzero(f1 == f1.max())[-1]
        thresholds.append(float(cut[best]))
    return thresholds


def classification_metrics(
    y_true: np.ndarray | Sequence[int],
    scores: np.ndarray,
    *,
    multi_label: bool = False,
    class_names: Sequence[str] | None = None,
    thresholds: Sequence[float] | float | None = None,
    scores_are_logits: bool = True,
) -> dict:
    """Headline, per-class and confusion metrics of ``scores [N, C]`` against ``y_true``.

    ``y_true``: int ``[N]`` (single-label) or 0/1 ``[N, C]`` (multi-label). ``scores``: logits, or
    probabilities with ``scores_are_logits=False``. ``thresholds`` (multi-label only): per-label thresholds
    (e.g. :func:`best_thresholds` on validation data) reported under ``"tuned"`` next to the 0.5 results.
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] < 1:
        raise ValueError(f"scores must be a 2-D [N, C] array, got shape {s.shape}")
    if s.size and not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    num_classes = s.shape[1]
    names = _names(class_names, num_classes)
    probs = probabilities(s, multi_label=multi_label, scores_are_logits=scores_are_logits)
    if multi_label:
        return _multi_label(y_true, probs, names, thresholds)
    if thresholds is not None:
        raise ValueError("thresholds apply to multi_label=True only (single-label predicts the argmax)")
    return _single_label(y_true, s, probs, names)


def _single_label(y_true: np.ndarray | Sequence[int], scores: np.ndarray, probs: np.ndarray, names: list[str]) -> dict:
    n, num_classes = scores.shape
    y = np.asarray(y_true)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y_true must be int [{n}] class indices, got shape {y.shape}")
    if y.size and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"y_true must hold class indices in [0, {num_classes}), got dtype {y.dtype}")
    labels = np.arange(num_classes)
    predicted = scores.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
    auc = [_auc(y == c, probs[:, c]) for c in labels]
    counts = confusion_matrix(y, predicted, labels=labels)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    return {
        "task": "single_label",
        "num_samples": int(n),
        "num_classes": int(num_classes),
        "class_names": names,
        "accuracy": float(accuracy_score(y, predicted)),
        # The mean per-class recall (the ISIC 2018 Task 3 challenge's metric); classes absent from y_true are
        # left out, as scikit-learn does.
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)) if n else 0.0,
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "auc": _mean_defined(auc),
        },
        "per_class": {
            "precision": _floats(precision),
            "recall": _floats(recall),
            "f1": _floats(f1),
            "support": [int(v) for v in support],
            "auc": auc,
        },
        "classes_without_auc": sum(a is None for a in auc),
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "counts": counts.astype(int).tolist(),
            "normalised": normalised.tolist(),
        },
    }


def _multi_label(
    y_true: np.ndarray | Sequence[int],
    probs: np.ndarray,
    names: list[str],
    thresholds: Sequence[float] | float | None,
) -> dict:
    y, p = _check_multi_label(y_true, probs, "y_true", "scores")
    auc = [_auc(y[:, c].astype(bool), p[:, c]) for c in range(y.shape[1])]
    result: dict = {
        "task": "multi_label",
        "num_samples": int(y.shape[0]),
        "num_classes": int(y.shape[1]),
        "class_names": names,
        "threshold": DEFAULT_THRESHOLD,
    }
    fixed = _at_thresholds(y, p, np.full(y.shape[1], DEFAULT_THRESHOLD))
    result["subset_accuracy"] = fixed["subset_accuracy"]
    result["micro_f1"] = fixed["micro_f1"]
    result["macro"] = dict(fixed["macro"], auc=_mean_defined(auc))
    result["per_class"] = dict(fixed["per_class"], auc=auc)
    result["classes_without_auc"] = sum(a is None for a in auc)
    if thresholds is not None:
        t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (y.shape[1],))
        result["tuned"] = dict(_at_thresholds(y, p, t), thresholds=_floats(t))
    return result


def _at_thresholds(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> dict:
    predicted = (p >= thresholds[None, :]).astype(np.uint8)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, zero_division=0)
    return {
        "subset_accuracy": float(accuracy_score(y, predicted)),
        "micro_f1": float(f1_score(y, predicted, average="micro", zero_division=0)),
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "per_class": {
            "precision": _floats(precision),
            "recall": _floats(recall),
            "f1": _floats(f1),
            "support": [int(v) for v in support],
        },
    }


def _check_multi_label(y_true: object, probs: object, y_name: str, p_name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{p_name} must be a 2-D [N, C] array, got shape {p.shape}")
    if y.shape != p.shape:
        raise ValueError(f"{y_name} must be 0/1 with the shape of {p_name} {p.shape}, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{y_name} must contain only 0 and 1 (multi-hot)")
    return y.astype(np.uint8), p


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC, None when only one of the two classes is present."""
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.shape[0]:
        return None
    return float(roc_auc_score(positive, score))


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    names = [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names but scores have {num_classes} columns")
    return names
