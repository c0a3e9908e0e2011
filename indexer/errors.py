"""Errors of the indexer; the service maps them to HTTP answers (``DatabaseUnavailable`` -> 503)."""

from __future__ import annotations


class CollectionError(Exception):
    """A collection that cannot be used as asked; the message names the file, value or setting and the fix."""


class ConsistencyError(CollectionError):
    """The database, the FAISS index and the manifest disagree (or a foreign checkpoint was given)."""


class CheckpointMismatch(ConsistencyError):
    """A checkpoint other than the one the collection was built with (its embeddings would not match)."""


class DatabaseUnavailable(CollectionError):
    """The metadata database cannot be reached (connection refused, dropped, locked for too long)."""
