"""Reproduce the papers' tables: a grid of shipped configs through the real trainer and evaluation code.

    .venv/bin/python -m benchmarks.reproduce --grid all --budget cpu-small
    .venv/bin/python -m benchmarks.reproduce --grid paper-cnn --budget gpu-full --data-root cifar100=/data/c100
    .venv/bin/python -m benchmarks.reproduce --report-only          # rebuild RESULTS.md from the saved runs

Grids: ``paper-cnn`` (MSCFNet paper 000, Tables 1-3: CNN-5, ResNet18, ResNet50, MSCFNet-2/4 on CIFAR-10,
CIFAR-100, Fashion-MNIST) and ``vit-ablation`` (MS-ViT paper 003, §5.3: ViT, ViT MultiScale, ViT MultiLoss and
both, on ChestX-ray14). Budgets are config files, never overrides in this code: ``gpu-full`` runs the configs
as shipped (``configs/cnn``, ``configs/vit``); ``cpu-small`` runs ``configs/reproduce/cpu_small/<name>.yaml``
(a shipped config plus a budget layer), ``cpu-paper`` (the paper's 10 epochs on the full training sets, on a CPU)
``configs/reproduce/cpu_paper/<name>.yaml``; a run without such a file is outside that budget.

Each run trains with :class:`training.trainer.Trainer` (checkpoints under ``--runs-dir``, outside the repository),
then its best checkpoint is evaluated with ``training.evaluation``: classification on the full test split, and
retrieval with the test images as queries against the training images the model was trained on (mAP@all, P@K).
The numbers go to ``<out>/<budget>/<name>/metrics.json``; ``results/RESULTS.md`` and
``results/figures/accuracy_across_datasets.png`` are rebuilt from every saved run, beside the papers' published
numbers (transcribed below, as printed in the paper text).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.logging import RichHandler  # noqa: E402

from models import CheckpointError, load_checkpoint  # noqa: E402
from msir_data import DatasetError  # noqa: E402
from training.config import load_config  # noqa: E402
from training.evaluation.model_evaluation import evaluate_checkpoint  # noqa: E402
from training.evaluation.per_epoch import headline  # noqa: E402
from training.loop import TrainingDivergedError  # noqa: E402
from training.prepared_data import PreparedData  # noqa: E402
from training.runinfo import cpu_name, device_name, git_dirty, git_sha, now, write_json  # noqa: E402
from training.splits import take  # noqa: E402
from training.trainer import Trainer  # noqa: E402

logger = logging.getLogger("benchmarks.reproduce")
console = Console(stderr=True)

from benchmarks.reproduce_report import (  # noqa: E402
    ABLATION_ARMS,
    BUDGETS,
    CNN_METHODS,
    DATASETS,
    GRIDS,
    KS,
    SHARED_DATASETS,
    TARS,
    repo_relative,
    write_results,
)


@dataclass(frozen=True)
class Entry:
    """One run of a grid; ``configs`` maps a budget to its config file (absent: outside that budget)."""

    name: str
    grid: str
    dataset: str
    method: str
    configs: dict[str, Path]


def default_grid() -> list[Entry]:
    entries = []
    for dataset in ("cifar10", "cifar100", "fashion_mnist"):
        for method in CNN_METHODS:
            name = f"{method}_{dataset}"
            configs = {"gpu-full": REPO / "configs" / "cnn" / f"{name}.yaml"}
            entries.append(Entry(name, "paper-cnn", dataset, method, configs))
    for arm in ABLATION_ARMS:
        configs = {"gpu-full": REPO / "configs" / "vit" / f"{arm}_chestxray14.yaml"}
        entries.append(Entry(f"{arm}_chestxray14", "vit-ablation", "chestxray14", arm, configs))
    for e in entries:
        for budget in ("cpu-small", "cpu-paper"):
            layered = REPO / "configs" / "reproduce" / budget.replace("-", "_") / f"{e.name}.yaml"
            if layered.is_file():
                e.configs[budget] = layered
    return entries


def ensure_dataset(root: Path | None) -> None:
    """Extract a shared tar into the cache folder a config reads (never into the repository)."""
    if root is None or root.exists() or root.name not in TARS:
        return
    tar = SHARED_DATASETS / TARS[root.name]
    if not tar.is_file():
        return  # the reader then names the missing folder
    console.print(f"extracting {tar} to {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp, tarfile.open(tar) as archive:
        archive.extractall(tmp, filter="data")
        os.replace(Path(tmp) / root.name, root)


# -- one run -------------------------------------------------------------------------------------------------------
def evaluate_run(
    checkpoint: Path, data: PreparedData, device: torch.device, batch_size: int, progress: bool
) -> dict[str, Any]:
    """Test-split classification and retrieval (test queries, training-subset database) of a run's checkpoint,
    through :func:`training.evaluation.model_evaluation.evaluate_checkpoint` (as msir-eval and msir-train evaluate)."""
    loaded = load_checkpoint(checkpoint, device=device)
    model, meta = loaded.model, loaded.meta
    if data.test is None:
        raise DatasetError(f"{checkpoint}: the run has no test split to evaluate on")
    val = None if data.val is None else (data.val.images, data.val.labels)  # multi-label thresholds, as msir-eval
    evaluated = evaluate_checkpoint(
        model,
        meta.preprocess,
        (data.test.images, data.test.labels),
        (take(data.images, data.train_rows), data.labels[data.train_rows]),
        class_names=meta.class_names,
        multi_label=meta.multi_label,
        batch_size=batch_size,
        device=device,
        thresholds_from=val,
        ks=KS,
        progress=progress,
    )
    cls, ret = evaluated["classification"], evaluated["retrieval"]
    classification: dict[str, Any] = {"task": cls["task"], **headline(cls)}
    if "tuned" in cls:
        classification.update(f1_macro_tuned=cls["tuned"]["macro"]["f1"], micro_f1_tuned=cls["tuned"]["micro_f1"])
    keep = ("num_queries", "num_database", "queries_without_relevant", "map_at_all", "map_at_r", "precision_at_k",
            "recall_at_k", "hit_rate_at_k")  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "classification": classification, "retrieval": {k: ret[k] for k in keep}}


def device_info(device: torch.device) -> dict[str, Any]:
    cores, threads = os.cpu_count() or 0, torch.get_num_threads()
    label = f"{cpu_name()}, {cores} cores, {threads} torch threads"
    if device.type == "cuda":
        label = f"{device_name(device)} (cuda), host {label}"
    return {"type": device.type, "name": device_name(device), "cpu_cores": cores, "label": label}


def run_entry(
    entry: Entry,
    budget: str,
    out: Path,
    runs_dir: Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = True,
) -> dict[str, Any]:
    """Train ``entry`` at ``budget``, evaluate its best checkpoint, write ``<out>/<budget>/<name>/metrics.json``."""
    config = entry.configs[budget]
    run_dir = runs_dir / budget / entry.name
    cfg, raw = load_config(config, [f"output_dir={run_dir}", *overrides])
    ensure_dataset(cfg.data.root)
    load_before = os.getloadavg()[0]  # the machine may be shared: contention shows in the timings
    started = time.perf_counter()
    trainer = Trainer(cfg, raw, resume=resume)
    result = trainer.run()
    run_wall = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate_run(
        result.best_checkpoint, trainer.data, trainer.device, cfg.eval.batch_size, cfg.runtime.progress
    )
    data = trainer.data
    cuda = trainer.device.type == "cuda"
    phases = cfg.phase_list()
    record: dict[str, Any] = {
        "name": entry.name,
        "grid": entry.grid,
        "dataset": entry.dataset,
        "method": entry.method,
        "model": cfg.model.name,
        "config": repo_relative(config),
        "budget": {
            "name": budget,
            "epochs": cfg.total_epochs,
            "phases": [round(p.epochs, 4) for p in phases] if len(phases) > 1 else None,
            "train_images": len(data.train_rows),
            "limit_train": cfg.data.limit_train,
            "val_images": len(data.val) if data.val is not None else 0,
            "test_images": len(data.test) if data.test is not None else 0,
            "image_size": list(data.spec.image_size),
            "batch_size": cfg.optim.batch_size,
            "database": f"the {len(data.train_rows)} training images the model was trained on",
        },
        "data": {k: data.summary.get(k) for k in ("kind", "root", "splits", "skipped")},
        "device": device_info(trainer.device),
        "precision": "bf16 autocast" if trainer.cpu_bf16 or (cuda and cfg.runtime.amp) else "fp32",
        **evaluation,
        "train_seconds": result.train_seconds,
        "run_wall_seconds": run_wall,
        "eval_seconds": time.perf_counter() - started,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "best": result.metrics.get("best"),  # the checkpoint evaluated: {metric, value, epoch} on validation
        "trainer_test": result.metrics.get("test"),  # the trainer's own pass over the same checkpoint
        "run_dir": str(run_dir),
        "git_sha": git_sha(),
        "git_dirty": git_dirty(),
        "finished_at": now(),
    }
    target = out / budget / entry.name
    target.mkdir(parents=True, exist_ok=True)
    write_json(target / "metrics.json", record)
    (target / "error.json").unlink(missing_ok=True)
    del trainer
    gc.collect()
    return record


def select(entries: list[Entry], grid: str, budget: str, only: Sequence[str]) -> list[Entry]:
    known = {e.name for e in entries}
    unknown = sorted(set(only) - known)
    if unknown:
        raise SystemExit(f"--only {unknown}: unknown run name(s); known: {sorted(known)}")
    chosen = [e for e in entries if (grid == "all" or e.grid == grid) and (not only or e.name in only)]
    return [e for e in chosen if budget in e.configs]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=[*GRIDS, "all"], default="all")
    ap.add_argument("--budget", choices=BUDGETS, default="cpu-small")
    ap.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run names, e.g. mscfnet2_cifar10")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "reproduce", help="per-run metrics.json")
    ap.add_argument("--runs-dir", type=Path, default=Path("~/.cache/msir/reproduce"), help="checkpoints")
    ap.add_argument("--results", type=Path, default=REPO / "results" / "RESULTS.md")
    ap.add_argument("--figures", type=Path, default=REPO / "results" / "figures")
    ap.add_argument("--skip-existing", action="store_true", help="keep runs whose metrics.json exists")
    ap.add_argument("--no-resume", action="store_true", help="retrain runs whose checkpoints exist")
    ap.add_argument("--data-root", action="append", default=[], metavar="DATASET=PATH", help="e.g. cifar100=/data")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                    help="config override for every run, e.g. runtime.device=cuda")  # fmt: skip
    ap.add_argument("--dry-run", action="store_true", help="list the runs and their configs, run nothing")
    ap.add_argument("--report-only", action="store_true", help="rebuild RESULTS.md and the figure only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)])
    roots = dict(item.split("=", 1) for item in args.data_root if "=" in item)
    if len(roots) != len(args.data_root) or set(roots) - set(DATASETS):
        raise SystemExit(f"--data-root takes DATASET=PATH with DATASET in {sorted(DATASETS)}, got {args.data_root}")
    runs_dir = args.runs_dir.expanduser()
    entries = [] if args.report_only else select(default_grid(), args.grid, args.budget, args.only)
    failed = []
    for i, entry in enumerate(entries, 1):
        target = args.out / args.budget / entry.name
        console.rule(f"[{i}/{len(entries)}] {entry.name} ({args.budget}: {repo_relative(entry.configs[args.budget])})")
        if args.dry_run:
            continue
        if args.skip_existing and (target / "metrics.json").is_file():
            console.print(f"skipped: {target / 'metrics.json'} exists")
            continue
        overrides = [*args.overrides]
        if entry.dataset in roots:
            overrides.append(f"data.root={roots[entry.dataset]}")
        try:
            record = run_entry(entry, args.budget, args.out, runs_dir, overrides=overrides, resume=not args.no_resume)
        except (ValueError, OSError, CheckpointError, TrainingDivergedError) as exc:  # DatasetError, ConfigError...
            logger.error("%s failed: %s", entry.name, exc)
            failed.append(entry.name)
            target.mkdir(parents=True, exist_ok=True)
            write_json(target / "error.json", {"error": f"{type(exc).__name__}: {exc}", "at": now()})
            continue
        c = record["classification"]
        score = c.get("accuracy", c["f1_macro"])
        console.print(
            f"{entry.name}: {score:.4f} test, mAP@all {record['retrieval']['map_at_all']:.4f}, "
            f"train {record['train_seconds']:.0f} s, eval {record['eval_seconds']:.0f} s"
        )
    if not args.dry_run:
        path = write_results(args.out, args.results, args.figures / "accuracy_across_datasets.png")
        console.print(f"wrote {path} and {args.figures / 'accuracy_across_datasets.png'}")
    if failed:
        console.print(f"[red]{len(failed)} run(s) failed:[/red] {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
