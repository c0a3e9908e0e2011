"""Evaluation of msir models: classification and retrieval metrics, kNN voting, plots and reports."""

from msir_core.retrieval.knn import KnnPrediction, knn_predict
from msir_core.retrieval.metrics import retrieval_metrics
from training.evaluation.classification import best_thresholds, classification_metrics

__all__ = ["KnnPrediction", "best_thresholds", "classification_metrics", "knn_predict", "retrieval_metrics"]
