"""The GPU check, in one go: ``scripts/gpu_check.sh OUTDIR`` (this file does the work).

On a machine with one CUDA GPU, the project tree and its installed ``.venv`` (wheels downloaded beforehand; nothing
is fetched), within ``--budget`` seconds (default 470, under 8 minutes):

1. ``env``: ``nvidia-smi``, torch / CUDA versions and the GPU name -> ``OUTDIR/env.json``.
2. ``cuda_tests``: ``pytest -m cuda`` (the tests that need a GPU) -> ``OUTDIR/cuda_tests.{log,xml}``.
3. ``torchrun_ws1``: ``torchrun --standalone --nproc-per-node 1 msir-train`` (world size 1, NCCL) for one epoch of
   MSCFNet-4 on CIFAR-10 -> ``OUTDIR/torchrun_ws1/`` (run.json records world size and backend).
4. ``train_speed``: ``benchmarks/train_speed.py`` (10 epochs of the paper recipe, msir trainer vs a DataLoader
   loop) -> ``OUTDIR/train_speed/``; its msir row gives the seconds MSCFNet-4 took to reach the paper's 74.43 %.
5. ``OUTDIR/summary.{json,md}``: every step's exit code and seconds, the torchrun backend, the paper target.

``--cpu-dry-run`` (or ``MSIR_GPU_CHECK_CPU=1``) runs the same steps on the CPU (gloo) on a tiny generated
CIFAR-10-format archive, with ``HOME`` moved under OUTDIR so no real dataset or cache is read: the test suite runs
it so that this script cannot rot. Exit code 0 when every step succeeded.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("gpu_check")
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAPER_ACCURACY = 0.7443  # MSCFNet-4 on CIFAR-10 (paper 000, Table 1)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def tiny_cifar_tar(path: Path, per_class: int = 6) -> Path:
    """A CIFAR-10-format archive (``cifar10/{train,test}/<class>/N.jpg``, 32x32) of class-coloured noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for split, n in (("train", per_class), ("test", max(2, per_class // 3))):
            for c, name in enumerate(CIFAR_CLASSES):
                for i in range(n):
                    img = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                    img[:, :, c % 3] += np.uint8(25 * (c // 3 + 1))
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"cifar10/{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


class Runner:
    def __init__(self, out: Path, budget: float, env: dict[str, str]) -> None:
        self.out, self.env = out, env
        self.deadline = time.monotonic() + budget
        self.steps: dict[str, dict[str, Any]] = {}

    def run(self, name: str, cmd: list[str], cap: float) -> int:
        """Run ``cmd`` with its output in ``OUTDIR/<name>.log``, killed at ``cap`` s or the overall budget."""
        limit = max(1.0, min(cap, self.deadline - time.monotonic()))
        log = self.out / f"{name}.log"
        t0 = time.monotonic()
        with log.open("w") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = 124
        seconds = time.monotonic() - t0
        self.steps[name] = {"rc": rc, "seconds": round(seconds, 1), "timed_out": rc == 124, "log": log.name}
        logger.info("%s: exit %s in %.1f s", name, rc, seconds)
        return rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--cpu-dry-run", action="store_true", default=os.environ.get("MSIR_GPU_CHECK_CPU") == "1")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for all steps together")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = args.outdir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    dry = args.cpu_dry_run
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    tar = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar"
    if dry:
        home = out / "cpu-home"  # train_speed extracts to and caches under ~/.cache/msir: keep it here
        home.mkdir(exist_ok=True)
        env |= {"HOME": str(home), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        tar = tiny_cifar_tar(out / "tiny-cifar10.tar")
    device = "cpu" if dry else "cuda"
    runner = Runner(out, args.budget, env)
    py = sys.executable

    # 1. Environment.
    if shutil.which("nvidia-smi") and not dry:
        runner.run("nvidia_smi", ["nvidia-smi"], 30)
    probe = (
        "import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'cuda_available': torch.cuda.is_available(), 'nccl': torch.distributed.is_nccl_available(), "
        "'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))"
    )
    env_out = subprocess.run([py, "-c", probe], env=env, capture_output=True, text=True, check=False)
    info = json.loads(env_out.stdout) if env_out.returncode == 0 else {"error": env_out.stderr[-2000:]}
    (out / "env.json").write_text(json.dumps({**info, "cpu_dry_run": dry}, indent=2) + "\n")

    # 2. The cuda-marked tests (in the dry run: one module, where they are collected and skipped).
    tests = ["tests/training/test_trainer.py"] if dry else ["tests"]
    runner.run(
        "cuda_tests",
        [
            py,
            "-m",
            "pytest",
            "-q",
            "-m",
            "cuda",
            "-p",
            "no:cacheprovider",
            f"--junitxml={out / 'cuda_tests.xml'}",
            *tests,
        ],
        60 if dry else 150,
    )

    # 3. torchrun, world size 1 (NCCL on the GPU, gloo in the dry run).
    data_root = Path(env.get("HOME", str(Path.home()))) / ".cache" / "msir" / "datasets" / "cifar10"
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_speed import extract  # the benchmark's own extraction, once, before any timing

    extract(tar, data_root.parent)
    ws1 = out / "torchrun_ws1"
    runner.run(
        "torchrun_ws1",
        [
            str(BIN / "torchrun"), "--standalone", "--nproc-per-node=1", str(BIN / "msir-train"),
            "--config", str(REPO / "configs" / "cnn" / "mscfnet4_cifar10.yaml"), "--data-root", str(data_root),
            "--out", str(ws1), "--device", device, "--epochs", "1", "--limit-train", "40" if dry else "10000",
            "--set", "runtime.progress=false",
        ],
        120,
    )  # fmt: skip
    run_json = json.loads((ws1 / "run.json").read_text()) if (ws1 / "run.json").is_file() else {}

    # 4. Training speed and the paper's 74.43 % (msir trainer vs DataLoader loop).
    speed = out / "train_speed"
    budget = ["--epochs", "1", "--train-limit", "40", "--test-limit", "20", "--workers", "0"] if dry else []
    runner.run(
        "train_speed",
        [
            py,
            str(REPO / "benchmarks" / "train_speed.py"),
            "--device",
            device,
            "--tar",
            str(tar),
            "--out",
            str(speed),
            *budget,
        ],
        120 if dry else 330,
    )
    speed_json = next(iter(sorted(speed.glob("train_speed_*.json"))), None)
    speed_report = json.loads(speed_json.read_text()) if speed_json else {}
    msir_row = next((r for r in speed_report.get("results", []) if r["pipeline"] == "msir trainer"), {})

    # 5. Summary.
    summary = {
        "cpu_dry_run": dry,
        "env": info,
        "steps": runner.steps,
        "torchrun_ws1": {k: run_json.get(k) for k in ("world_size", "backend", "device", "device_name")},
        "paper_target": {
            "accuracy": PAPER_ACCURACY,
            "budget": speed_report.get("budget"),
            "final_test_accuracy": msir_row.get("final_test_accuracy"),
            "seconds_to_paper_accuracy": msir_row.get("seconds_to_paper_accuracy"),
            "images_per_s": msir_row.get("images_per_s"),
        },
    }
    expected_backend = "gloo" if dry else "nccl"
    ok = all(s["rc"] in (0, 5) for s in runner.steps.values()) and run_json.get("backend") == expected_backend
    summary["ok"] = ok
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    target = summary["paper_target"]
    lines = [
        f"# GPU check ({'CPU dry run' if dry else info.get('gpu')})",
        "",
        "| step | exit | seconds |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {s['rc']} | {s['seconds']} |" for name, s in runner.steps.items()),
        "",
        f"torchrun world size {run_json.get('world_size')}, backend {run_json.get('backend')}, "
        f"{run_json.get('device_name')}.",
        f"MSCFNet-4 on CIFAR-10 ({target['budget']}): final test accuracy {target['final_test_accuracy']}, "
        f"seconds to the paper's 74.43 %: {target['seconds_to_paper_accuracy']} (None: not reached).",
        "",
    ]
    (out / "summary.md").write_text("\n".join(lines))
    logger.info("%s", "\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
