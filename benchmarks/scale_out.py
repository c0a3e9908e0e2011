"""Scaling out on one machine: images/s of 1 vs 2 training processes (torchrun, gloo) and 1 vs 2 indexing shards.

Side by side, in one run, on the same data (CIFAR-10 JPEGs from ``../shared/datasets/cifar10-jpg.tar``, extracted
to ``~/.cache/msir/datasets/``):

- training: MSCFNet-4 (``configs/cnn/mscfnet4_cifar10.yaml``, global batch 64) for one epoch over
  ``--train-limit`` images: ``msir-train`` with 1 torch thread, with ``--threads-wide`` threads, and
  ``torchrun --nproc-per-node 2`` (1 thread per rank). images/s is the trainer's own (training steps only, the
  same global batches; under torchrun rank 0's rate times the world size).
- indexing: ``msir-index build`` of ``--index-limit`` test images into a PostgreSQL database, one process vs two
  ``--shard I/2`` processes at once (each 1 torch thread, decoding in-process), then ``rebuild``. images/s is the
  source size over the job's wall time (from the first start to the last exit, process start-up included) and,
  beside it, over the slowest shard's pipeline time.

On CPU this measures the machinery, not a speed-up to expect: two processes share the cores with everything else
running. Results: ``results/benchmarks/scale_out-<cpu>-<n>cores.{json,md}``.

    .venv/bin/python benchmarks/scale_out.py                       # ~3-5 minutes on 2 shared cores
    .venv/bin/python benchmarks/scale_out.py --train-limit 512 --index-limit 500
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_speed import CACHE, TAR, extract  # noqa: E402

from training.runinfo import cpu_name, git_sha  # noqa: E402

BIN = Path(sys.executable).parent
CONFIG = REPO / "configs" / "cnn" / "mscfnet4_cifar10.yaml"
CHECKPOINT = REPO / "demo" / "checkpoint" / "mscfnet4_cifar10.safetensors"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def clean_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": str(threads)}


def train(kind: str, root: Path, work: Path, limit: int, threads: int) -> dict[str, Any]:
    out = work / f"train-{kind}-{uuid.uuid4().hex[:6]}"
    args = [
        "--config", str(CONFIG), "--data-root", str(root), "--out", str(out), "--device", "cpu", "--epochs", "1",
        "--limit-train", str(limit), "--set", f"runtime.num_threads={threads}", "--set", "runtime.progress=false",
        "--set", "data.val_fraction=0.01", "--set", "data.test_split=null",
    ]  # fmt: skip
    if kind == "2 processes (torchrun)":
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", str(BIN / "msir-train"), *args]
    else:
        cmd = [str(BIN / "msir-train"), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=clean_env(threads), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"training ({kind}) failed:\n{proc.stderr[-4000:]}")
    with (out / "history.csv").open() as fh:
        row = list(csv.DictReader(fh))[-1]
    run = json.loads((out / "run.json").read_text())
    return {
        "setup": kind,
        "processes": run["world_size"],
        "threads_per_process": threads,
        "images_per_s": round(float(row["images_per_s"]), 1),
        "train_seconds": round(float(row["seconds"]), 2),
        "wall_seconds": round(wall, 1),
        "steps": int(row["step"]),
        "loss": round(float(row["loss"]), 4),
    }


def index(shards: int, root: Path, work: Path, url: str, limit: int) -> dict[str, Any]:
    directory = work / f"index-{shards}-{uuid.uuid4().hex[:6]}"
    common = [
        "build", str(directory), "-c", str(CHECKPOINT), "--data", str(root), "--split", "test", "--limit", str(limit),
        "--db", url, "--workers", "0", "--device", "cpu", "--json",
    ]  # fmt: skip
    cmds = [[str(BIN / "msir-index"), *common]] if shards == 1 else [
        [str(BIN / "msir-index"), *common, "--shard", f"{i}/{shards}"] for i in range(shards)
    ]  # fmt: skip
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=clean_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds
    ]
    reports = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"indexing ({shards} shards) failed:\n{stderr[-4000:]}")
        reports.append(json.loads(stdout))
    wall = time.perf_counter() - t0
    rebuild_s = 0.0
    if shards > 1:
        t1 = time.perf_counter()
        subprocess.run(
            [str(BIN / "msir-index"), "rebuild", str(directory), "--db", url, "-c", str(CHECKPOINT)],
            env=clean_env(1), capture_output=True, check=True,
        )  # fmt: skip
        rebuild_s = time.perf_counter() - t1
    added = sum(r["added"] for r in reports)
    pipeline = max(r["timings"]["wall_s"] for r in reports)
    return {
        "setup": "1 process" if shards == 1 else f"{shards} shards at once (--shard I/{shards})",
        "processes": shards,
        "images": added,
        "images_per_s": round(added / wall, 1),
        "images_per_s_pipeline": round(added / pipeline, 1),
        "wall_seconds": round(wall, 1),
        "rebuild_seconds": round(rebuild_s, 2),
    }


def mean_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The first round's description with every number replaced by the mean over rounds (and the per-round rates)."""
    out = dict(rounds[0])
    for key, value in out.items():
        if isinstance(value, float):
            out[key] = round(sum(r[key] for r in rounds) / len(rounds), 2)
    out["images_per_s_rounds"] = [r["images_per_s"] for r in rounds]
    return out


def database(admin_url: str) -> tuple[str, sa.Engine, str]:
    """A fresh database on the server of ``admin_url`` (dropped at the end)."""
    name = f"msir_i13_bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return name, engine, sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-limit", type=int, default=1024)
    parser.add_argument("--index-limit", type=int, default=1000)
    parser.add_argument("--threads-wide", type=int, default=2, help="threads of the wide one-process training run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of every setup (the mean is shown)")
    parser.add_argument(
        "--admin-url", default=os.environ.get("MSIR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1/test")
    )
    parser.add_argument("--tar", type=Path, default=TAR)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args()
    root = extract(args.tar, CACHE)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    setups = (("1 process, 1 thread", 1), (f"1 process, {args.threads_wide} threads", args.threads_wide))
    setups += (("2 processes (torchrun)", 1),)
    runs: dict[str, list[dict[str, Any]]] = {}
    with TemporaryDirectory(prefix="msir-scale-out-") as tmp:
        work = Path(tmp)
        # Interleaved rounds (A B C D E, A B C D E...): a busy spell of the shared machine hits every setup alike.
        for round_ in range(args.repeats):
            for kind, threads in setups:
                log(f"round {round_ + 1}, training: {kind}")
                runs.setdefault(f"train:{kind}", []).append(train(kind, root, work, args.train_limit, threads))
                log(f"  {runs[f'train:{kind}'][-1]['images_per_s']} images/s")
            for shards in (1, 2):
                # Each run gets its own database, so none finds another's rows.
                name, engine, url = database(args.admin_url)
                try:
                    log(f"round {round_ + 1}, indexing: {shards} shard(s)")
                    runs.setdefault(f"index:{shards}", []).append(index(shards, root, work, url, args.index_limit))
                    log(f"  {runs[f'index:{shards}'][-1]['images_per_s']} images/s")
                finally:
                    with engine.connect() as conn:
                        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    engine.dispose()
    training = [mean_of(v) for k, v in runs.items() if k.startswith("train:")]
    indexing = [mean_of(v) for k, v in runs.items() if k.startswith("index:")]
    cpu = cpu_name()
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "device": f"cpu: {cpu}, {cores} cores (a VM shared with other jobs)",
        "cores": cores,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "repeats": args.repeats,
        "training": {"model": "mscfnet4", "global_batch": 64, "images": args.train_limit, "results": training},
        "indexing": {"checkpoint": str(CHECKPOINT.relative_to(REPO)), "database": "PostgreSQL", "results": indexing},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", cpu.split("@")[0]).strip("-")
    stem = args.out / f"scale_out-{slug}-{cores}cores"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Scaling out: 1 vs 2 processes (training) and shards (indexing)",
        "",
        f"Device: {cpu}, **{cores} CPU cores**, shared with other jobs (load average {load_before[0]:.1f} before, "
        f"{report['load_average_after'][0]:.1f} after). CPU only: gloo for training, PostgreSQL for indexing. "
        "With 2 cores, two processes compete with each other and with the rest of the machine: these numbers show "
        "the distributed paths working, not the speed-up of a multi-GPU host.",
        "",
        f"Training: MSCFNet-4, global batch 64, 1 epoch of {args.train_limit} CIFAR-10 images "
        "(images/s of the training steps, the trainer's own count).",
        "",
        f"Every setup ran {args.repeats} times, interleaved; the tables show means (each round's images/s in "
        "brackets).",
        "",
        "| setup | processes | threads each | images/s | train s | wall s (with start-up) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['setup']} | {r['processes']} | {r['threads_per_process']} | {r['images_per_s']} "
            f"({', '.join(map(str, r['images_per_s_rounds']))}) | {r['train_seconds']} | {r['wall_seconds']} |"
            for r in training
        ),
        "",
        f"Indexing: `msir-index build` of {args.index_limit} CIFAR-10 test images (MSCFNet-4 demo checkpoint) into "
        "PostgreSQL, 1 torch thread per process, decoding in-process.",
        "",
        "| setup | processes | images | images/s (job wall) | images/s (slowest pipeline) | wall s | rebuild s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['setup']} | {r['processes']} | {r['images']} | {r['images_per_s']} "
            f"({', '.join(map(str, r['images_per_s_rounds']))}) | {r['images_per_s_pipeline']} | "
            f"{r['wall_seconds']} | {r['rebuild_seconds']} |"
            for r in indexing
        ),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    log(f"saved {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
