"""Library start-up chatter (FAISS loader, alembic) is hidden unless logging at debug level."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from msir_core.logs import NOISY_LOGGERS, debug_requested, quiet_library_loggers


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    names = (*NOISY_LOGGERS, "httpx")
    before = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def test_quiet_unless_debug(caplog: pytest.LogCaptureFixture) -> None:
    quiet_library_loggers(False, extra=("httpx",))
    with caplog.at_level(logging.INFO):
        logging.getLogger("faiss.loader").info("Could not load library with AVX512 support")
        logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
        logging.getLogger("httpx").info("HTTP Request")
        logging.getLogger("alembic.runtime.migration").warning("a real warning")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]
    caplog.clear()
    quiet_library_loggers(True)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("faiss.loader").info("Loading faiss.")
        logging.getLogger("alembic.runtime.migration").info("Will assume non-transactional DDL.")
    assert len(caplog.records) == 2


def test_debug_requested_by_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSIR_LOG_LEVEL", raising=False)
    assert not debug_requested() and debug_requested(True)
    monkeypatch.setenv("MSIR_LOG_LEVEL", " DEBUG ")
    assert debug_requested()
    monkeypatch.setenv("MSIR_LOG_LEVEL", "info")
    assert not debug_requested()
