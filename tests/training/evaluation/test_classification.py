"""classification_metrics and best_thresholds, cross-checked against scikit-learn and hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from training.evaluation import best_thresholds, classification_metrics


def _logits(rng: np.random.Generator, y: np.ndarray, num_classes: int, signal: float = 1.5) -> np.ndarray:
    scores = rng.normal(size=(len(y), num_classes))
    scores[np.arange(len(y)), y] += signal
    return scores


def test_single_label_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    scores = _logits(rng, y, 5)
    m = classification_metrics(y, scores, class_names=list("abcde"))
    probs = softmax(scores, axis=1)
    pred = scores.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y, pred, zero_division=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    np.testing.assert_allclose(m["per_class"]["precision"], p, atol=1e-12)
    np.testing.assert_allclose(m["per_class"]["recall"], r, atol=1e-12)
    np.testing.assert_allclose(m["per_class"]["f1"], f, atol=1e-12)
    assert m["per_class"]["support"] == s.tolist()
    macro = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    assert [m["macro"][k] for k in ("precision", "recall", "f1")] == pytest.approx(macro[:3], abs=1e-12)
    # Per-class AUC from binarised labels; macro from scikit-learn's own one-vs-rest path.
    for c in range(5):
        assert m["per_class"]["auc"][c] == pytest.approx(roc_auc_score(y == c, probs[:, c]), abs=1e-6)
    assert m["macro"]["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-6)
    np.testing.assert_allclose(
        m["confusion_matrix"]["normalised"], confusion_matrix(y, pred, normalize="true"), atol=1e-12
    )
    assert m["confusion_matrix"]["counts"] == confusion_matrix(y, pred).tolist()
    assert m["class_names"] == list("abcde")
    json.dumps(m, allow_nan=False)


def test_probabilities_give_the_same_metrics_as_logits() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 100)
    scores = _logits(rng, y, 4)
    from_logits = classification_metrics(y, scores)
    from_probs = classification_metrics(y, softmax(scores, axis=1), scores_are_logits=False)
    assert from_probs["accuracy"] == from_logits["accuracy"]
    assert from_probs["per_class"]["auc"] == pytest.approx(from_logits["per_class"]["auc"], abs=1e-9)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(y, scores, scores_are_logits=False)


def test_hand_computed_single_label_with_an_absent_class() -> None:
    # Class 2 has no sample: zero precision/recall/F1, AUC None, confusion row of zeros.
    y = np.array([0, 0, 1, 1])
    scores = np.log(np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]))
    m = classification_metrics(y, scores)
    assert m["accuracy"] == pytest.approx(0.5)  # predictions 0, 1, 1, 2
    assert m["per_class"]["precision"] == pytest.approx([1.0, 0.5, 0.0])
    assert m["per_class"]["recall"] == pytest.approx([0.5, 0.5, 0.0])
    assert m["per_class"]["f1"] == pytest.approx([2 / 3, 0.5, 0.0])
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 0.5) / 3)
    # Class 0 scores 0.7, 0.4 for positives and 0.2, 0.3 for negatives: perfectly ranked.
    assert m["per_class"]["auc"][0] == pytest.approx(1.0)
    assert m["per_class"]["auc"][1] == pytest.approx(0.75)  # positives 0.7, 0.3; negatives 0.2, 0.5
    assert m["per_class"]["auc"][2] is None
    assert m["classes_without_auc"] == 1
    assert m["macro"]["auc"] == pytest.approx(0.875)
    assert m["confusion_matrix"]["normalised"] == [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]]


def test_multi_label_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random((200, 6)) < 0.3).astype(np.uint8)
    logits = rng.normal(size=(200, 6)) + 1.2 * (2 * y - 1)
    m = classification_metrics(y, logits, multi_label=True)
    probs = expit(logits)
    pred = (probs >= 0.5).astype(int)
    np.testing.assert_allclose(m["per_class"]["auc"], roc_auc_score(y, probs, average=None), atol=1e-6)
    assert m["macro"]["auc"] == pytest.approx(roc_auc_score(y, probs, average="macro"), abs=1e-6)
    np.testing.assert_allclose(m["per_class"]["f1"], f1_score(y, pred, average=None, zero_division=0), atol=1e-12)
    assert m["macro"]["f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert "tuned" not in m
    json.dumps(m, allow_nan=False)


def test_tuned_thresholds_are_chosen_on_validation_and_applied() -> None:
    rng = np.random.default_rng(3)
    shift = np.array([-2.0, 0.0, 1.5, 0.5])  # miscalibrated labels, where 0.5 is the wrong cut

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.random((n, 4)) < 0.35).astype(np.uint8)
        return y, rng.normal(size=(n, 4)) + 1.5 * (2 * y - 1) + shift

    y_val, logits_val = sample(400)
    y_test, logits_test = sample(300)
    t = best_thresholds(y_val, expit(logits_val))
    assert len(t) == 4
    # Each threshold is the best F1 cut among the label's own validation probabilities (brute force).
    for c in range(4):
        p = expit(logits_val[:, c])
        cuts = np.unique(p)
        predicted = p[:, None] >= cuts[None, :]
        tp = (predicted & (y_val[:, c, None] == 1)).sum(axis=0)
        f1_all = 2 * tp / (predicted.sum(axis=0) + y_val[:, c].sum())
        assert f1_score(y_val[:, c], p >= t[c], zero_division=0) == pytest.approx(f1_all.max(), abs=1e-12)
    m = classification_metrics(y_test, logits_test, multi_label=True, thresholds=t)
    pred = (expit(logits_test) >= np.asarray(t)).astype(int)
    tuned = m["tuned"]
    assert tuned["thresholds"] == pytest.approx(t)
    np.testing.assert_allclose(tuned["per_class"]["f1"], f1_score(y_test, pred, average=None, zero_division=0))
    assert tuned["micro_f1"] == pytest.approx(f1_score(y_test, pred, average="micro", zero_division=0))
    assert tuned["subset_accuracy"] == pytest.approx(accuracy_score(y_test, pred))
    assert tuned["macro"]["f1"] > m["macro"]["f1"]  # the shifted labels gain from their own cut


def test_best_thresholds_hand_computed_and_label_without_positives() -> None:
    y = np.array([[1, 0], [1, 0], [0, 0], [1, 0], [0, 0]])
    p = np.array([[0.9, 0.1], [0.6, 0.2], [0.55, 0.3], [0.3, 0.4], [0.1, 0.5]])
    # Label 0: cut 0.6 gives F1 0.8, cut 0.3 gives 6/7, the best (TP 3, FP 1).
    assert best_thresholds(y, p) == pytest.approx([0.3, 0.5])


def test_invalid_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="2-D"):
        classification_metrics([0, 1], np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics([0, 3], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="class_names"):
        classification_metrics([0, 1], np.zeros((2, 3)), class_names=["a", "b"])
    with pytest.raises(ValueError, match="0 and 1"):
        classification_metrics(np.full((2, 3), 2), np.zeros((2, 3)), multi_label=True)
    with pytest.raises(ValueError, match="multi_label=True only"):
        classification_metrics([0, 1], np.zeros((2, 3)), thresholds=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([0, 1], np.array([[0.0, np.nan], [0.0, 1.0]]))
