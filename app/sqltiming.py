"""Time spent in SQL per calling thread, from SQLAlchemy's cursor events.

``Collection.search`` does the FAISS search and reads the neighbours' rows in one call; listening to the engine's
cursor events (the documented way to instrument SQLAlchemy) splits its time into index and database without
reaching into the collection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, event

T = TypeVar("T")


class SqlTimer:
    def __init__(self, engine: Engine) -> None:
        self._local = threading.local()
        self.engine = engine
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)

    def _before(self, *args: Any) -> None:
        self._local.started = time.perf_counter()

    def _after(self, *args: Any) -> None:
        started = getattr(self._local, "started", None)
        if started is not None:
            self._local.total = getattr(self._local, "total", 0.0) + time.perf_counter() - started
            self._local.started = None

    def timed(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float, float]:
        """``(fn(...), seconds, seconds of SQL in this thread meanwhile)``."""
        self._local.total = 0.0
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        return result, time.perf_counter() - started, float(self._local.total)
