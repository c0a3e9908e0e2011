"""Retrieval math shared by training, the indexer and the service: ranking, re-ranking, kNN vote, probabilities."""
