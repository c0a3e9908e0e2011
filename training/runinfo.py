"""The record every run leaves beside its checkpoints: ``run.json``, ``history.csv`` and ``metrics.json``."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from msir_core.atomic import atomic_write, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_sha(root: Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of the source tree (None outside a repository or before the first commit)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def git_dirty(root: Path = REPO_ROOT) -> bool | None:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


# The instruction-set flags that change how fast torch and FAISS run on a CPU (bf16 and AMX matmuls, AVX-512
# distance kernels): timings from machines that differ in them are not comparable, so every label names them.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    """The CPU's model name and its speed-relevant flags, e.g. ``Intel(R) Xeon(R) Processor (avx2, avx512f, ...)``."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    present = [f for f in SPEED_FLAGS if f in flags]
    return f"{model} ({', '.join(present) if present else 'no avx2'})" if flags else model


def environment(device: torch.device) -> dict[str, Any]:
    sha = git_sha()
    return {
        "git_sha": sha,
        "git_dirty": git_dirty() if sha else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "pid": os.getpid(),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per evaluated epoch; columns are the union of the rows' keys, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


# Short names of the validation metrics in the one-line epoch summary (history.csv keeps the full names).
SHORT_METRIC = {
    "accuracy": "acc",
    "subset_accuracy": "subset acc",
    "f1_macro": "f1",
    "micro_f1": "micro f1",
    "auc_macro": "auc",
    "map_at_all": "mAP",
    "map_at_r": "mAP@R",
}


def epoch_summary(row: dict[str, Any], epochs: int, best_metric: str) -> str:
    """One short log line per epoch, e.g. ``epoch 3/10 loss 1.2345 acc 0.512 val acc 0.498 mAP 0.412 41 s``.

    Only the headline numbers: training loss and accuracy, the validation metric that picks the best checkpoint
    and mAP when retrieval was evaluated; every column of the epoch is in ``history.csv``.
    """
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"acc {row['train_accuracy']:.3f}"]
    shown = [best_metric] + [k for k in ("map_at_all",) if k != best_metric]
    for key in shown:
        value = row.get(f"val_{key}")
        if value is not None:
            parts.append(f"val {SHORT_METRIC.get(key, key)} {value:.3f}")
    seconds = float(row["seconds"])
    parts.append(f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s")
    return " ".join(parts)


__all__ = [
    "cpu_name",
    "device_name",
    "environment",
    "epoch_summary",
    "git_sha",
    "now",
    "read_json",
    "write_history",
    "write_json",
]
