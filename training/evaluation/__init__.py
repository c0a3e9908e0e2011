"""Evaluation of msir models: classification and retrieval metrics, kNN voting, plots and reports."""

from training.evaluation.classification import best_thresholds, classification_metrics
from training.evaluation.knn import KnnPrediction, knn_predict
from training.evaluation.retrieval import retrieval_metrics

__all__ = ["KnnPrediction", "best_thresholds", "classification_metrics", "knn_predict", "retrieval_metrics"]
