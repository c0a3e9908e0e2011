"""A PostgreSQL server of its own for a benchmark: ``initdb`` in a temporary directory, listening on loopback at a
free port, run as the ``postgres`` user when the caller is root (initdb and postgres refuse root). The crash harness
(``benchmarks/crasher.py``) crashes and restarts it, which it cannot do to the machine's shared server."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from app.server_process import free_port


class OwnPostgres:
    """A PostgreSQL server of the crasher's own, so that a fault can crash and restart it without touching anybody
    else's databases. Stopped (and its directory removed) by :meth:`close`."""

    def __init__(self) -> None:
        self.bin = pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="msir-crasher-pg-"))
        self.root.chmod(0o755)  # the postgres user reads its data directory and socket below it
        self.data, self.port = self.root / "data", free_port()
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
        self.running = False
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
            self.start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_owner, str(self.bin / tool), *args], capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: exit {done.returncode}: {done.stderr[-2000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        self.running = True

    def crash(self, down_s: float) -> None:
        """An immediate shutdown (every backend quits at once, no checkpoint), ``down_s`` seconds down, a start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.running = False
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        try:
            if self.running:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
                self.running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def pg_bindir() -> Path:
    """The directory of initdb and pg_ctl: on PATH, else ``pg_config --bindir`` (Debian keeps them off PATH)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    try:
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError("--own-postgres needs PostgreSQL's server binaries (initdb, pg_ctl)") from error
    return Path(done.stdout.strip())
