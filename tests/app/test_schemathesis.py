"""schemathesis against a real ``msir-serve``: every check, all phases, a bounded budget, 0 failures.

The run uses ``tests/app/schemathesis_hooks.py``: real decodable images in the file fields of the cases meant to be
valid (so search, classify and upload answer 200/201 and those answers are checked against the schema, not only the
415/422s), and no multipart-ambiguous "invalid" bodies. The budget (``--max-time``) keeps the test within about two
minutes on the project's 2-core machine; ``MSIR_SCHEMATHESIS_MAX_TIME`` raises it for a longer run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.app.helpers import API_KEY, REPO, Fixture, start_server, stop_server

pytestmark = pytest.mark.timeout(300)

MAX_TIME_S = int(os.environ.get("MSIR_SCHEMATHESIS_MAX_TIME", "75"))


def _successes(metrics: str, method: str, route: str) -> int:
    pattern = rf'msir_http_requests_total{{method="{method}",route="{re.escape(route)}",status="20[01]"}} ([0-9.]+)'
    return int(sum(float(v) for v in re.findall(pattern, metrics)))


def test_schemathesis_all_checks_no_failure(
    tmp_path: Path, sqlite_template: Path, checkpoint: Path, image_files: dict[str, list[Path]]
) -> None:
    directory = tmp_path / "collection"
    shutil.copytree(sqlite_template, directory)
    server = start_server(Fixture(directory, checkpoint, None, image_files), tmp_path, MSIR_MAX_UPLOAD_BYTES="1000000")
    try:
        cli = Path(sys.executable).with_name("schemathesis")
        command = [
            str(cli),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--max-time",
            str(MAX_TIME_S),
            "--seed",
            "1",
            "--header",
            f"X-API-Key: {API_KEY}",
            # The key above is the one auth; generated Authorization/X-API-Key values would only test the header
            # parser against a request that is authorised anyway.
            "--generation-with-security-parameters",
            "false",
            "--no-color",
        ]
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.app.schemathesis_hooks",
            "PYTHONPATH": str(REPO),
            "MSIR_SCHEMATHESIS_BASE_URL": server.url,
        }
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=MAX_TIME_S + 120)
        (tmp_path / "schemathesis.txt").write_text(done.stdout + done.stderr)
        report = done.stdout[-6000:] + done.stderr[-2000:]
        assert done.returncode == 0, report
        assert re.search(r"\b0 failures\b|No issues found|passed", report), report
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        stop_server(server)
    # The real images reached the end of each path, not only its 4xx answers.
    for method, route in (("POST", "/v1/search"), ("POST", "/v1/classify"), ("POST", "/v1/images")):
        assert _successes(metrics, method, route) > 0, (route, metrics)
    assert 'status="500"' not in metrics
