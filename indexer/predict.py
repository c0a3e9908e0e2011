"""What a query image is predicted to be: the classifier head's probabilities and the vote of its neighbours.

Shared by ``msir-index search`` and the service's ``/v1/search`` (which shapes the same numbers into its schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.records import Hit
from msir_core.retrieval.knn import knn_predict
from msir_core.retrieval.probabilities import top_classes

__all__ = ["KnnVote", "Prediction", "head_scores", "knn_vote", "predict"]


@dataclass(frozen=True)
class KnnVote:
    """``labels``: the predicted class (single-label) or label set (multi-label); ``distribution``: (label,
    fraction of the neighbours voting for it), largest first, zeros left out; ``used``: neighbours that could vote
    (single-label: those with a label)."""

    labels: list[str]
    distribution: list[tuple[str, float]]
    used: int


@dataclass(frozen=True)
class Prediction:
    classifier: list[tuple[str, float]]  # (class, probability), most probable first
    knn: KnnVote | None  # None without any neighbour

    def to_json(self) -> dict[str, Any]:
        knn = self.knn
        return {
            "classifier": [{"label": c, "probability": p} for c, p in self.classifier],
            "knn": None
            if knn is None
            else {
                "labels": knn.labels,
                "distribution": [{"label": c, "probability": p} for c, p in knn.distribution],
                "neighbours_used": knn.used,
            },
        }


def head_scores(logits: np.ndarray, class_names: list[str], multi_label: bool, top: int) -> list[tuple[str, float]]:
    """The ``top`` classes of one image's logits ``[C]`` by softmax (single-label) or sigmoid (multi-label)."""
    return top_classes(logits, class_names, multi_label=multi_label, top=top)


def knn_vote(hits: list[Hit], class_names: list[str], multi_label: bool) -> KnnVote | None:
    """The vote of ``hits`` (see :mod:`msir_core.retrieval.knn`) over every label they carry: a collection's labels
    are what its images carry, checkpoint class or not. ``class_names`` only orders the candidates (the checkpoint's
    classes first, then the others sorted), so ties break the same way everywhere. Neighbours with several labels
    make it a multi-label vote."""
    if not hits:
        return None
    carried = {label for h in hits for label in h.record.labels}
    names = [c for c in class_names if c in carried] + sorted(carried - set(class_names))
    index = {name: i for i, name in enumerate(names)}
    if not names:
        return KnnVote([], [], 0)
    scores = np.array([h.score for h in hits], dtype=np.float64)
    if multi_label or any(len(h.record.labels) > 1 for h in hits):
        multi_hot = np.zeros((len(hits), len(names)), dtype=np.int64)
        for row, hit in enumerate(hits):
            multi_hot[row, [index[label] for label in hit.record.labels]] = 1
        result = knn_predict(multi_hot, scores, len(names), multi_label=True)
        chosen = [names[i] for i in np.flatnonzero(result.predicted)]
        used = sum(1 for h in hits if h.record.labels)
    else:
        first = [index[h.record.labels[0]] if h.record.labels else -1 for h in hits]
        result = knn_predict(np.array(first, dtype=np.int64), scores, len(names))
        predicted = int(result.predicted)
        chosen = [names[predicted]] if predicted >= 0 else []
        used = sum(1 for c in first if c >= 0)
    distribution = [
        (names[i], float(p)) for i, p in sorted(enumerate(result.distribution), key=lambda t: -t[1]) if p > 0
    ]
    return KnnVote(chosen, distribution, used)


def predict(logits: np.ndarray, hits: list[Hit], class_names: list[str], multi_label: bool, top: int = 3) -> Prediction:
    return Prediction(head_scores(logits, class_names, multi_label, top), knn_vote(hits, class_names, multi_label))
