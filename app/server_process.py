"""A service in a child process, for tests, benchmarks and scripts: a free port, start, wait until ready, stop.

One harness instead of one per caller: the readiness loop notices a server that died during start-up (and says
why, from its log), a server that never gets ready is killed rather than left behind, and stopping is by the PID
of the process that was started (SIGTERM first: the graceful shutdown, then SIGKILL after a bound).
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; another process could still take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerNotReady(RuntimeError):
    """The server exited during start-up, or did not answer its readiness probe in time (the log's tail says why)."""


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_server(
    command: Sequence[str],
    *,
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    probe: str = "/readyz",
    timeout_s: float = 60.0,
    poll_s: float = 0.2,
    host: str = "127.0.0.1",
) -> ServerProcess:
    """Start ``command`` (which must listen on ``port``), its output in ``log``; return once ``probe`` answers 200.

    Raises :class:`ServerNotReady` (the server killed) when it exits first or is not ready in ``timeout_s``.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        process = subprocess.Popen(
            list(command), env=dict(env) if env is not None else None, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT
        )
    server = ServerProcess(process, f"http://{host}:{port}", log)
    try:
        wait_ready(server, probe=probe, timeout_s=timeout_s, poll_s=poll_s)
    except BaseException:  # never leave a half-started server behind (Ctrl-C included)
        kill(server)
        raise
    return server


def wait_ready(server: ServerProcess, *, probe: str = "/readyz", timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerNotReady(
                f"{server.url}: the server exited with {server.process.returncode}:\n{server.output()}"
            )
        try:
            if httpx.get(f"{server.url}{probe}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(poll_s)
    raise ServerNotReady(f"{server.url}{probe} not ready after {timeout_s:g} s:\n{server.output()[-4000:]}")


def stop_server(server: ServerProcess, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> int:
    """Stop the process that was started (by its PID): ``sig`` (SIGTERM: graceful shutdown), SIGKILL after
    ``timeout_s``. Returns its exit code."""
    if server.process.poll() is None:
        server.process.send_signal(sig)
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %g s: killed", server.url, timeout_s)
            kill(server)
    return int(server.process.returncode)


def kill(server: ServerProcess) -> None:
    if server.process.poll() is None:
        server.process.kill()
    server.process.wait()


__all__ = ["ServerNotReady", "ServerProcess", "free_port", "kill", "start_server", "stop_server", "wait_ready"]
