"""``scripts/gpu_check.sh``: its CPU dry run (tiny generated CIFAR-10 archive, gloo) runs every step of the GPU check,
so the script that is run once on a GPU machine stays in working order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {"PYTHON": sys.executable, "MSIR_GPU_CHECK_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), str(out)], env=env, capture_output=True, text=True, timeout=480
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["cpu_dry_run"]
    assert set(summary["steps"]) == {"cuda_tests", "torchrun_ws1", "train_speed"}
    assert all(step["rc"] in (0, 5) and not step["timed_out"] for step in summary["steps"].values())
    assert summary["torchrun_ws1"]["world_size"] == 1 and summary["torchrun_ws1"]["backend"] == "gloo"
    target = summary["paper_target"]
    assert target["accuracy"] == 0.7443 and target["budget"].startswith("1 epochs, 40 training images")
    assert 0.0 <= target["final_test_accuracy"] <= 1.0 and target["images_per_s"] > 0
    assert (out / "cuda_tests.xml").is_file() and (out / "torchrun_ws1" / "last.safetensors").is_file()
    assert "GPU check (CPU dry run)" in (out / "summary.md").read_text()
    # Nothing of the real home (datasets, decode cache) was used: the dry run extracted its own tiny archive.
    assert (out / "cpu-home" / ".cache" / "msir" / "datasets" / "cifar10" / "train" / "cat").is_dir()
