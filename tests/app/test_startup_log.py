"""A real ``msir-serve`` start: FAISS's instruction-set fallbacks and alembic's migration context are logged only at
debug level (``MSIR_LOG_LEVEL=debug``); at the default level the log shows the service's own lines."""

from __future__ import annotations

from pathlib import Path

from tests.app.helpers import Fixture, LiveServer, start_server, stop_server

# Logger names appear in msir-serve's log format ("... INFO faiss.loader: Loading faiss ...").
NOISE = ("faiss.loader", "alembic", "AVX512", "AVX2", "Context impl", "non-transactional DDL")


def test_startup_noise_only_at_debug_level(
    shared_server: LiveServer, sqlite_collection: Fixture, tmp_path: Path
) -> None:
    quiet = shared_server.output()  # MSIR_LOG_LEVEL=info
    assert "Application startup complete" in quiet, quiet  # info lines are logged...
    assert not [word for word in NOISE if word in quiet], quiet  # ...but not the libraries' start-up chatter
    # Before /readyz said ready, one search went through the whole app, and it was answered.
    assert "warm-up search through the app:" in quiet and "warm-up search through the app answered" not in quiet
    server = start_server(sqlite_collection, tmp_path, MSIR_LOG_LEVEL="debug")
    try:
        loud = server.output()
    finally:
        assert stop_server(server) == 0
    assert "faiss.loader" in loud and "alembic.runtime.migration" in loud, loud
