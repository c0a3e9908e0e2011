"""Time ``make test-deploy`` cold and then warm, and record image sizes, build times and time from ``up`` to ready.

Cold: a fresh Docker data root and an empty deploy cache (no base image, no wheelhouse, no layer cache, pip's own
cache off), so the run debootstraps, downloads every wheel and builds every layer. Warm: the same run again, with
all of that in place and nothing changed. Both use a dockerd of their own (the script refuses to run while another
engine answers, since that one would hold images) and remove its data root at the end. Docker and docker-compose
must be installed (``make test-deploy`` installs them as root); their install time is not part of the numbers.

    .venv/bin/python -m benchmarks.deploy      # ~15 min on 2 shared cores; writes results/benchmarks/deploy.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.eval_speed import cpu_cores, cpu_model

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"


def version(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "unavailable"


def run_once(label: str, cache: Path, data_root: Path) -> dict[str, Any]:
    timings = cache / f"timings-{label}.json"
    env = {
        **os.environ,
        "MSIR_DEPLOY_CACHE": str(cache),
        "MSIR_DOCKER_DATA_ROOT": str(data_root),
        "DEPLOY_TIMINGS": str(timings),
        "PIP_NO_CACHE_DIR": "1",
    }
    load = os.getloadavg()[0]
    start = time.monotonic()
    done = subprocess.run(["make", "test-deploy"], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    total = time.monotonic() - start
    tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
    print(f"[{label}] make test-deploy: exit {done.returncode} in {total:.0f} s", *tail, sep="\n  ")
    if done.returncode != 0:
        raise SystemExit(f"make test-deploy failed in the {label} run")
    return {
        "total_s": round(total, 1),
        "load_average_1min_at_start": round(load, 2),
        **json.loads(timings.read_text()),
    }


def markdown(result: dict[str, Any]) -> str:
    cold, warm = result["cold"], result["warm"]
    sizes = "\n".join(f"| `{name}` | {size / 1e6:.0f} MB |" for name, size in cold["image_bytes"].items())
    rows = [
        ("whole `make test-deploy`", "total_s"),
        ("base image (debootstrap + import)", "base_image_s"),
        ("wheelhouse (pip download)", "wheelhouse_s"),
        ("build msir image", "build_msir_s"),
        ("build PostgreSQL image", "build_postgres_s"),
        ("PostgreSQL up to healthy", "postgres_ready_s"),
        ("index the 1000 demo images", "index_demo_s"),
        ("`up` to API /readyz 200", "up_to_ready_s"),
        ("`up` to API container healthy", "up_to_healthy_s"),
    ]
    table = "\n".join(f"| {name} | {cold.get(key, '-')} | {warm.get(key, '-')} |" for name, key in rows)
    return f"""# make test-deploy, cold and warm

Device: {result["device"]}, {result["cores"]} cores **shared with other jobs** (load average at the start: cold
{cold["load_average_1min_at_start"]}, warm {warm["load_average_1min_at_start"]}), so these times are slower than
on an idle machine. {result["docker"]}; {result["compose"]}. Measured {result["date"]} by `benchmarks/deploy.py`.

| step (seconds) | cold | warm |
| --- | --- | --- |
{table}

Cold: fresh Docker data root and deploy cache, pip cache off. Warm: the same run again, nothing changed.

| image | size |
| --- | --- |
{sizes}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary cache and data root")
    args = parser.parse_args()
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
        raise SystemExit("a Docker engine is running: stop it first (a cold run needs a dockerd of its own)")
    work = Path(tempfile.mkdtemp(prefix="msir-deploy-bench-"))
    try:
        cache, data_root = work / "cache", work / "docker"
        result: dict[str, Any] = {
            "device": cpu_model(),
            "cores": cpu_cores(),
            "docker": version(["dockerd", "--version"]),
            "compose": version(["docker-compose", "version", "--short"]),
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        }
        result["compose"] = f"docker-compose {result['compose']}"
        result["cold"] = run_once("cold", cache, data_root)
        result["warm"] = run_once("warm", cache, data_root)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "deploy.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "deploy.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
