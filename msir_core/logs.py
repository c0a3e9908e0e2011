"""Library start-up chatter at debug level only.

FAISS's loader logs at INFO every instruction set it tries ("Could not load library with AVX512 support due to:
ModuleNotFoundError...", then AVX2) before falling back to the generic build, and alembic logs its migration
context ("Context impl SQLiteImpl.", "Will assume non-transactional DDL.", "Running upgrade ..."). Both are
normal, but on a fresh start they read like errors. The CLIs (msir-index, msir-serve, the demo) hide them unless
logging at debug level (``MSIR_LOG_LEVEL=debug`` or a CLI's ``--verbose`` / ``--log-level debug``).

It lives in ``training`` (the lowest layer the CLIs share) because importing it must not import FAISS: the levels
have to be set before the first ``import faiss``, which ``import indexer`` does.
"""

from __future__ import annotations

import logging
import os

__all__ = ["NOISY_LOGGERS", "debug_requested", "quiet_library_loggers"]

NOISY_LOGGERS = ("alembic", "faiss.loader", "milvus_lite")


def debug_requested(flag: bool = False) -> bool:
    """True when a CLI's debug flag is set or ``MSIR_LOG_LEVEL`` is ``debug``."""
    return flag or os.environ.get("MSIR_LOG_LEVEL", "").strip().lower() == "debug"


def quiet_library_loggers(debug: bool, extra: tuple[str, ...] = ()) -> None:
    """WARNING and above from the start-up chatter of :data:`NOISY_LOGGERS` (and ``extra``); everything at debug.

    Call it before ``faiss`` is first imported: its loader logs while being imported.
    """
    for name in (*NOISY_LOGGERS, *extra):
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
