"""Suite-wide pytest wiring: the `cuda` and `postgres` markers, and the check that no test leaves a process behind."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The default runtime (auto) exports every checkpoint to ONNX on first use; the suite's tests compare with eager
# PyTorch and build many throwaway checkpoints, so they run torch (msir-index's --runtime and the app's settings both
# read MSIR_RUNTIME) unless a test asks otherwise; tests/app/test_runtime_auto.py covers auto.
os.environ.setdefault("MSIR_RUNTIME", "torch")

POSTGRES_URL = os.environ.get("MSIR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _postgres_reachable(url: str) -> str | None:
    """None when the server answers, else the reason."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # any driver/connection failure means "not reachable" here
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of the test PostgreSQL server; skip without it, but fail in CI where it must exist."""
    reason = _postgres_reachable(POSTGRES_URL)
    if reason is not None:
        message = f"PostgreSQL not reachable at {POSTGRES_URL} ({reason}); set MSIR_TEST_DATABASE_URL"
        if in_ci():
            pytest.fail(message + " — required when CI=true")
        pytest.skip(message)
    yield POSTGRES_URL


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
LEFTOVER_GRACE_S = 5.0


def _parents() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process visible in /proc."""
    out: dict[int, tuple[int, str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after its last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), fields[0], cmdline)
    return out


def live_descendants(root: int) -> dict[int, str]:
    """Descendants of ``root`` that are still running (zombies, already dead, are left out)."""
    table = _parents()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        _, state, cmdline = table[pid]
        if state != "Z":
            found[pid] = cmdline
        stack.extend(children.get(pid, []))
    return found


def _reap() -> None:
    # Orphans reparented to this process (the subreaper) are reaped here; Popen objects of finished tests are gone.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _leftovers() -> dict[int, str]:
    """Live descendants, less this process's own multiprocessing resource tracker: started by the first test that
    uses multiprocessing, it belongs to the test process and ends with it (EOF on its pipe)."""
    from multiprocessing import resource_tracker

    own = getattr(resource_tracker._resource_tracker, "_pid", None)
    return {pid: cmd for pid, cmd in live_descendants(os.getpid()).items() if pid != own}


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Fail the run when the suite leaves a process behind (a server not stopped, a decode worker that outlived a
    killed build...). This process becomes a child subreaper, so an orphaned grandchild is re-parented here instead
    of to PID 1 and is still found. Set up first, torn down last: after every other session fixture stopped its
    processes."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    left = _leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        _reap()
        left = _leftovers()
    if left:
        for pid in left:  # leave nothing running, then say what it was
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap()
        listing = "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in sorted(left.items()))
        pytest.fail(f"the test run left {len(left)} process(es) behind (killed now):\n{listing}", pytrace=False)
