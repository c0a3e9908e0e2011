"""The near-duplicate threshold: the copy-descriptor cosine above which two stored images are copies of one photo.

Kept apart from :mod:`indexer.duplicates` (FAISS, numpy) so that the service's settings can name it as their default
without importing the index code.
"""

# The calibrated cosine threshold of the copy descriptor (models.copy_descriptor, ours; the same for every
# checkpoint: it is computed from pixels, not by the model): benchmarks/duplicates.py picks it on augmented copies of
# CIFAR-10 test images (JPEG re-encodes, resizes, 10 % crops, flips, colour changes) against distinct images and
# writes it to results/benchmarks/duplicates.json (tests/indexer/test_duplicates.py checks that the two agree). The
# service's MSIR_DUPLICATE_THRESHOLD and `msir-index duplicates --threshold` default to it.
DEFAULT_THRESHOLD = 0.8747
