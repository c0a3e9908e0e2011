"""What a query image is predicted to be: the classifier head's probabilities and the vote of its neighbours.

Shared by ``msir-index search`` and the service's ``/v1/search`` (which shapes the same numbers into its schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.records import Hit
from training.evaluation.classification import probabilities
from training.evaluation.knn import knn_predict

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
    probs = probabilities(np.asarray(logits, dtype=np.float64)[None], multi_label=multi_label)[0]
    order = np.argsort(-probs, kind="stable")[: min(top, len(probs))]
    return [(class_names[i], float(probs[i])) for i in order]


def knn_vote(hits: list[Hit], class_names: list[str], multi_label: bool) -> KnnVote | None:
    """The vote of ``hits`` (see :mod:`training.evaluation.knn`); labels outside ``class_names`` do not vote."""
    if not hits:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    scores = np.array([h.score for h in hits], dtype=np.float64)
    num_classes = len(class_names)
    if multi_label:
        multi_hot = np.zeros((len(hits), num_classes), dtype=np.int64)
        for row, hit in enumerate(hits):
            for label in hit.record.labels:
                if label in index:
                    multi_hot[row, index[label]] = 1
        result = knn_predict(multi_hot, scores, num_classes, multi_label=True)
        chosen = [class_names[i] for i in np.flatnonzero(result.predicted)]
        used = len(hits)
    else:
        first = [index.get(h.record.labels[0], -1) if h.record.labels else -1 for h in hits]
        result = knn_predict(np.array(first, dtype=np.int64), scores, num_classes)
        predicted = int(result.predicted)
        chosen = [class_names[predicted]] if predicted >= 0 else []
        used = sum(1 for c in first if c >= 0)
    distribution = [
        (class_names[i], float(p)) for i, p in sorted(enumerate(result.distribution), key=lambda t: -t[1]) if p > 0
    ]
    return KnnVote(chosen, distribution, used)


def predict(logits: np.ndarray, hits: list[Hit], class_names: list[str], multi_label: bool, top: int = 3) -> Prediction:
    return Prediction(head_scores(logits, class_names, multi_label, top), knn_vote(hits, class_names, multi_label))
