"""A real Milvus standalone server for the backend tests, reachable on 127.0.0.1 only.

The ``milvus`` wheel ("embedded Milvus", 2.3.5) ships the standalone server binary with embedded etcd and local
storage; ``milvus.MilvusServer`` runs it as its own process. That binary listens on every interface for its gRPC
ports (Milvus 2.3 has no listen-address setting: ``ip`` is only the address it advertises), so it runs in a network
namespace of its own (``unshare --net``: only a loopback device, nothing reaches it from outside) and the tests reach
its proxy port through a forwarder: 127.0.0.1:<free port> here -> a Unix socket (files are not namespaced) -> the
proxy at 127.0.0.1:19530 inside the namespace.

Run as ``python -m tests.indexer.milvus_server BASE_DIR SOCKET`` inside the namespace: the server's data, logs and
config go under BASE_DIR; it prints ``ready <milvus pid>`` once the server answers, and stops the server (by its
PID) on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 170.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


def _forwarder(
    connect: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await connect()
        except OSError:
            writer.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # cancelled when the forwarder stops
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    return handle


def _loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS on ``lo``."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))


def _child(base: Path, sock: Path) -> None:
    """Inside the namespace: start the server, forward the Unix socket to its proxy port, stop on SIGTERM."""
    from milvus import MilvusServer, MilvusServerConfig

    _loopback_up()
    server = MilvusServer(MilvusServerConfig(), wait_for_started=False)
    server.set_base_dir(str(base))
    server.start()
    try:
        server.wait_started(timeout=START_TIMEOUT_S * 1000)
        port = server.listen_port

        async def main() -> None:
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            handle = _forwarder(lambda: asyncio.open_connection("127.0.0.1", port))
            async with await asyncio.start_unix_server(handle, path=str(sock)):
                print(f"ready {server.server_proc.pid}", flush=True)
                await stop.wait()

        asyncio.run(main())
    finally:
        server.stop()  # terminate, then kill after 1 s: by the PID it started


@dataclass
class RunningServer:
    """The namespace's process (whose child is the Milvus binary) and the forwarder to it."""

    uri: str
    process: subprocess.Popen[str]
    milvus_pid: int
    start_s: float
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.milvus_pid, signal.SIGKILL)  # only if the child could not stop it
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def unavailable() -> str | None:
    """Why a server cannot run here (None when it can)."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        return "the milvus package (embedded Milvus standalone, pip install milvus==2.3.5) is not installed"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is missing: the server could not be kept off the network"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace for the server ({probe.stderr.strip() or probe.returncode})"
    return None


def start(base: Path) -> RunningServer:
    """Start the server under ``base`` and a forwarder on 127.0.0.1; raises when it does not come up in time."""
    base.mkdir(parents=True, exist_ok=True)
    sock = base / "proxy.sock"
    started = time.monotonic()
    command = ["unshare", "--net", "--", sys.executable, "-m", "tests.indexer.milvus_server", str(base), str(sock)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(base / "child.log", "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until "ready PID" or the child's exit (its own timeout bounds it)
    if not line.startswith("ready "):
        process.kill()
        process.wait(timeout=10)
        raise RuntimeError(f"Milvus server did not start: {(base / 'child.log').read_text()[-2000:]}")
    milvus_pid = int(line.split()[1])

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        handle = _forwarder(lambda: asyncio.open_unix_connection(str(sock)))
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=serve, name="milvus-forwarder", daemon=True)
    thread.start()
    ready.wait(timeout=10)
    return RunningServer(f"http://127.0.0.1:{port[0]}", process, milvus_pid, time.monotonic() - started, loop, thread)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
