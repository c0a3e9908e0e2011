"""``msir-serve``: run the service with uvicorn, configured by :class:`app.settings.Settings`.

Options given here override the environment (they are written to ``MSIR_*`` variables so that every worker process
reads the same settings). SIGTERM/SIGINT stop accepting connections, let in-flight requests finish (up to
``MSIR_GRACEFUL_TIMEOUT_S``), close the collection and exit 0.

The collection is opened before the server starts, so a server that cannot serve refuses in one line naming the
file, what is wrong and the command that fixes it, with the exit code of its class (``msir_core.exit_codes.ExitCode``:
2 settings, 3 collection, 4 checkpoint, 5 database); the traceback only with ``MSIR_LOG_LEVEL=debug``. Connections
are served by ``app.connections`` (header timeout, minimum body rate, connection cap).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from pydantic import ValidationError

from app import connections
from app.settings import Settings
from msir_core.logs import quiet_library_loggers

if TYPE_CHECKING:
    from indexer import Collection

logger = logging.getLogger("app.cli")
WORKER_HEALTHCHECK_S = 60

OVERRIDES = {
    "collection_dir": "MSIR_COLLECTION_DIR",
    "checkpoint": "MSIR_CHECKPOINT",
    "database_url": "MSIR_DATABASE_URL",
    "host": "MSIR_HOST",
    "port": "MSIR_PORT",
    "workers": "MSIR_WORKERS",
    "device": "MSIR_DEVICE",
    "log_level": "MSIR_LOG_LEVEL",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="msir-serve",
        description="Serve an msir collection over HTTP (settings: MSIR_* environment variables or .env).",
    )
    parser.add_argument("--collection-dir", help="collection directory (MSIR_COLLECTION_DIR)")
    parser.add_argument("--checkpoint", help="checkpoint; default: the collection's (MSIR_CHECKPOINT)")
    parser.add_argument("--database-url", help="metadata database URL (MSIR_DATABASE_URL)")
    parser.add_argument("--host", help="listen address (MSIR_HOST)")
    parser.add_argument("--port", type=int, help="listen port (MSIR_PORT)")
    parser.add_argument("--workers", type=int, help="server processes (MSIR_WORKERS)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="model device (MSIR_DEVICE)")
    parser.add_argument("--log-level", help="logging level (MSIR_LOG_LEVEL)")
    return parser.parse_args(argv)


def _after_graceful_shutdown(signum: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal it shut down for once it is done. By then the shutdown was graceful, so main()
    # returns normally (exit status 0, callers such as app.quickstart carry on) instead of dying "killed by SIGTERM".
    logger.debug("signal %d after a graceful shutdown", signum)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    for name, env in OVERRIDES.items():
        value = getattr(args, name)
        if value is not None:
            os.environ[env] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MSIR_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}" for e in exc.errors()
        )
        # Written here, not through msir_core.exit_codes: importing models would load torch first, and a wrong setting
        # is refused at once. 2 is ExitCode.USAGE.
        sys.stderr.write(f"msir-serve: invalid settings: {problems}\n")
        raise SystemExit(2) from exc
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_library_loggers(settings.log_level == "debug")  # before app.main imports faiss
    common: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "access_log": settings.access_log,
        "proxy_headers": True,
        # uvicorn's httptools protocol plus a header timeout, a minimum body rate and a connection cap.
        "http": connections.PROTOCOL,
    }
    connections.configure(settings)
    from app.main import create_app

    collection = _open_or_refuse(settings)
    target: object
    if settings.workers > 1:
        # Checked above; several processes need an import string, each builds its app from the same environment.
        # uvicorn kills a worker that does not answer its health check within timeout_worker_healthcheck (5 s by
        # default) and starts another: a worker importing torch and loading its index on a busy machine takes longer,
        # and was seen restarted dozens of times before any served. 60 s still replaces a hung worker.
        collection.close()
        multi = {"factory": True, "workers": settings.workers, "timeout_worker_healthcheck": WORKER_HEALTHCHECK_S}
        target, common = "app.main:create_app", {**common, **multi}
    else:
        target = create_app(settings, opened=collection)
    previous = {sig: signal.signal(sig, _after_graceful_shutdown) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(target, **common)  # type: ignore[arg-type]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("msir-serve stopped")


def _open_or_refuse(settings: Settings) -> Collection:
    from app.main import open_collection
    from indexer.cli.explain import EXPLAINED, explain
    from msir_core.exit_codes import refuse

    try:
        return open_collection(settings)
    except EXPLAINED as exc:
        message, code = explain(exc, settings.collection_dir)
        refuse("msir-serve", message, code, exc)


if __name__ == "__main__":
    main()
