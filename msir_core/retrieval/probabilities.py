"""Class probabilities from a classifier head's logits: the one softmax / sigmoid every layer uses (evaluation,
``msir-index search``, the service's ``/v1/classify`` and ``/v1/search``)."""

from __future__ import annotations

import numpy as np


def probabilities(scores: np.ndarray, *, multi_label: bool, scores_are_logits: bool = True) -> np.ndarray:
    """Float64 probabilities: softmax (single-label) or sigmoid (multi-label) of logits, or checked."""
    s = np.asarray(scores, dtype=np.float64)
    if not scores_are_logits:
        if s.size and (s.min() < 0.0 or s.max() > 1.0):
            raise ValueError(
                f"scores_are_logits=False but the scores span [{s.min():.4g}, {s.max():.4g}], outside [0, 1]"
            )
        return s
    if multi_label:
        # exp of -|x| never overflows; this is the usual stable form of the logistic function.
        e = np.exp(-np.abs(s))
        return np.where(s >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    shifted = s - s.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def top_classes(
    logits: np.ndarray, class_names: list[str], *, multi_label: bool, top: int | None
) -> list[tuple[str, float]]:
    """``(class, probability)`` of one image's logits ``[C]``, most probable first (ties in class order); the
    ``top`` first, or every class when ``top`` is None."""
    probs = probabilities(np.asarray(logits, dtype=np.float64)[None], multi_label=multi_label)[0]
    order = np.argsort(-probs, kind="stable")
    if top is not None:
        order = order[: min(top, len(probs))]
    return [(class_names[i], float(probs[i])) for i in order]


__all__ = ["probabilities", "top_classes"]
