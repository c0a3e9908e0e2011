"""A short, bounded run of ``benchmarks/crasher.py`` (issue #23): writers against a server on PostgreSQL while the
server and the indexer are killed with SIGKILL, the database's connections are cut and (where PostgreSQL's server
binaries are installed) the crasher's own PostgreSQL server crashes and restarts; nothing acknowledged may be lost
or come back, rows = vectors, ``msir-index verify`` passes and the fixed queries keep their top-10."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.postgres
def test_a_short_crasher_run_loses_nothing(tmp_path: Path, postgres_url: str) -> None:
    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    own = _has_server_binaries()  # then the crasher crashes a PostgreSQL server of its own; else only cuts
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "crasher.py"), "--duration", "10", "--kills", "5", "--servers", "1",
         "--seed", "7", "--tag", "test", "--out", str(tmp_path), *(["--own-postgres"] if own else [])],
        env={**_env(), "MSIR_CRASHER_ADMIN_URL": admin}, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert (tmp_path / "crasher-test.json").exists(), run.stderr[-3000:]
    report = json.loads((tmp_path / "crasher-test.json").read_text())
    kills = report["kills"]
    assert report["kills_total"] == 5 and report["process_kills"] == 3, kills
    assert (kills["database_crash"], kills["database_connections"]) == ((1, 1) if own else (0, 2)), kills
    assert report["writes_acked"] > 0
    assert (report["lost"], report["resurrected"], report["wrong_labels"]) == (0, 0, 0), report
    assert report["rows_equal_vectors"] and report["verify_ok"] and report["top10_same"], report
    assert report["ok"] and run.returncode == 0, run.stderr[-3000:]
    assert "Device:" in (tmp_path / "crasher-test.md").read_text()


def _has_server_binaries() -> bool:
    import shutil

    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return True
    if not shutil.which("pg_config"):
        return False
    bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
    return bool(bindir) and (Path(bindir) / "initdb").exists() and (Path(bindir) / "pg_ctl").exists()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MSIR_")}
