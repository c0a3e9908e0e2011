"""msir_core: what every layer shares and nothing of ours is imported by it.

Retrieval math (``msir_core.retrieval``: ranking, re-ranking, kNN vote, class probabilities, retrieval metrics) and
plumbing (crash-safe files, exit codes, library logging, progress bars, the allocator hint).
"""
