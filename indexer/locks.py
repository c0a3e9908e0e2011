"""Locks of a collection: a readers-writer lock (threads) and an exclusive file lock (processes)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import CollectionError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process lock, one writer process is the rule
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".write.lock"


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers so writes are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@contextlib.contextmanager
def directory_lock(directory: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Exclusive lock on ``<directory>/.write.lock`` so two processes never write one collection at once.

    The kernel releases it when the holder dies (even ``kill -9``), so a crashed build never blocks a re-run.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CollectionError(
                        f"{directory}: another process has been writing to this collection for more than "
                        f"{timeout_s:.0f} s; wait for it to finish"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
