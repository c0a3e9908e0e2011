"""Errors of the indexer; the service maps them to HTTP answers (``DatabaseUnavailable`` -> 503)."""

from __future__ import annotations


class CollectionError(Exception):
    """A collection that cannot be used as asked; the message names the file, value or setting and the fix."""


class ConsistencyError(CollectionError):
    """The database, the FAISS index and the manifest disagree (or a foreign checkpoint was given)."""


class DatabaseUnavailable(CollectionError):
    """The metadata database cannot be reached (connection refused, dropped, locked for too long)."""
