"""Why a collection cannot be opened, as one line with the command that fixes it (``msir-serve``, ``msir-index``).

:func:`explain` sorts the exceptions of :meth:`indexer.Collection.open` (and of the commands built on it) into the
classes of :class:`msir_core.exit_codes.ExitCode` and adds the fix; the programs print it with
:func:`msir_core.exit_codes.refuse`.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import exc as sa_exc

from indexer.errors import CheckpointMismatch, CollectionError, ConsistencyError, DatabaseUnavailable
from models import CheckpointError
from msir_core.exit_codes import ExitCode, one_line

# What a refusal may come from; anything else is a bug and keeps its traceback.
EXPLAINED = (CollectionError, CheckpointError, sa_exc.SQLAlchemyError, OSError)


def explain(error: BaseException, directory: Path | str) -> tuple[str, ExitCode]:
    """``(one-line message naming the file, what is wrong and the fixing command, exit code)``."""
    text = one_line(str(error))
    if isinstance(error, CheckpointMismatch):
        return f"{text} (MSIR_CHECKPOINT / --checkpoint)", ExitCode.CHECKPOINT
    if isinstance(error, CheckpointError):
        return (
            f"checkpoint unusable: {text}; pass an intact checkpoint with --checkpoint (MSIR_CHECKPOINT), the one "
            f"the collection was built with, or train one with `msir-train`",
            ExitCode.CHECKPOINT,
        )
    if isinstance(error, DatabaseUnavailable):
        return (
            f"{text}; start the database or fix MSIR_DATABASE_URL / --db, then retry",
            ExitCode.DATABASE,
        )
    if isinstance(error, sa_exc.SQLAlchemyError):
        cause = one_line(str(getattr(error, "orig", None) or error))
        return (
            f"metadata database of {directory} unusable ({cause}); restore it from a backup, or build the "
            f"collection again with `msir-index build {directory} ...`",
            ExitCode.DATABASE,
        )
    if isinstance(error, ConsistencyError):
        return (
            f"{text}; `msir-index verify {directory}` lists what disagrees and `msir-index rebuild {directory}` "
            f"re-creates the index from the database",
            ExitCode.COLLECTION,
        )
    if isinstance(error, CollectionError):
        fix = ""  # the collection's own messages name the fix, except for an index FAISS cannot read
        if ".faiss" in text and "msir-index" not in text:
            fix = f"; `msir-index rebuild {directory}` re-creates the index from the database"
        return f"{text}{fix}", ExitCode.COLLECTION
    if isinstance(error, OSError):
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        return f"{where}{error.strerror or text}", ExitCode.COLLECTION
    return text, ExitCode.USAGE
