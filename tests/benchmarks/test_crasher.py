"""A short, bounded run of ``benchmarks/crasher.py`` (issue #23): writers against a server on PostgreSQL while the
server and the indexer are killed with SIGKILL and the database's connections are cut; nothing acknowledged may be
lost or come back, rows = vectors, ``msir-index verify`` passes and the fixed queries keep their top-10."""

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
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "crasher.py"), "--duration", "8", "--kills", "3", "--servers", "1",
         "--seed", "7", "--tag", "test", "--out", str(tmp_path)],
        env={**_env(), "MSIR_CRASHER_ADMIN_URL": admin}, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    report = json.loads((tmp_path / "crasher-test.json").read_text())
    assert report["kills_total"] == 3 and report["kills"]["database_connections"] == 1, report["kills"]
    assert report["writes_acked"] > 0
    assert (report["lost"], report["resurrected"], report["wrong_labels"]) == (0, 0, 0), report
    assert report["rows_equal_vectors"] and report["verify_ok"] and report["top10_same"], report
    assert report["ok"] and run.returncode == 0, run.stderr[-3000:]
    assert "Device:" in (tmp_path / "crasher-test.md").read_text()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MSIR_")}
