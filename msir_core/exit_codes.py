"""How the command-line programs (``msir-serve``, ``msir-index``, ``msir-train``) refuse to start or go on.

One line on stderr: the program, which file or setting, what is wrong and which command fixes it; one exit code per
class of problem, the same in every program; the traceback only at debug log level (``MSIR_LOG_LEVEL=debug`` or the
program's ``--verbose``). It lives in ``models`` because every package depends on it and it on nothing.
"""

from __future__ import annotations

import os
import sys
import traceback
from enum import IntEnum
from typing import NoReturn, TextIO


class ExitCode(IntEnum):
    """Exit status of the msir programs, one per class of problem."""

    OK = 0
    MISMATCH = 1  # msir-index verify found the collection inconsistent
    USAGE = 2  # options, settings or configuration file
    COLLECTION = 3  # manifest, FAISS index or collection folder unusable or inconsistent
    CHECKPOINT = 4  # checkpoint missing, corrupt or not the collection's
    DATABASE = 5  # metadata database unreadable or unreachable
    DATA = 6  # dataset or image files
    DIVERGED = 7  # msir-train: the loss became NaN/inf


def debug_enabled(verbose: bool = False) -> bool:
    return verbose or os.environ.get("MSIR_LOG_LEVEL", "").strip().lower() == "debug"


def one_line(text: str) -> str:
    """Messages of wrapped exceptions (SQLAlchemy, FAISS) span lines; a refusal is one."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def refuse(
    program: str,
    message: str,
    code: ExitCode,
    exc: BaseException | None = None,
    *,
    verbose: bool = False,
    stream: TextIO | None = None,
) -> NoReturn:
    """Print ``program: message`` as one line (plus the traceback at debug level) and exit with ``code``."""
    out = stream or sys.stderr
    if exc is not None and debug_enabled(verbose):
        out.write("".join(traceback.format_exception(exc)))
    out.write(f"{program}: {one_line(message)}\n")
    out.flush()
    raise SystemExit(int(code))
