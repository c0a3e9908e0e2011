"""``msir-eval``: evaluate a checkpoint on a dataset; writes metrics.json, report.md and PNG plots.

Queries come from ``--query-split`` (default test) and are ranked against ``--db-split`` (default train);
when both are the same split each query's own image is excluded by item id. Classification metrics use the
checkpoint's classifier head on the query split; for multi-label checkpoints, per-label thresholds are tuned
on ``--val-split`` when the dataset has one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import torch
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from models import CheckpointError, ImageDecodeError, load_checkpoint
from msir_core.atomic import atomic_write_text
from msir_core.retrieval.rerank import RerankConfig, RerankError
from msir_data import DatasetError, open_dataset
from msir_data.cache import CachedSplit, cached_split
from training.evaluation.model_evaluation import Embedded, embed_split, evaluate_embedded
from training.evaluation.reports import write_markdown_report, write_plots
from training.splits import carve_test

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
console = Console(stderr=True)
logger = logging.getLogger(__name__)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="NAME.safetensors (with NAME.json)")],
    data: Annotated[Path, typer.Option("--data", help="dataset root folder")],
    kind: Annotated[str, typer.Option(help="dataset format, or auto to detect it")] = "auto",
    query_split: Annotated[str, typer.Option(help="split whose images are the queries")] = "test",
    db_split: Annotated[str, typer.Option(help="split whose images form the retrieval database")] = "train",
    val_split: Annotated[
        str | None, typer.Option(help="multi-label threshold tuning split (default: val when present)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default results/eval/<checkpoint name>)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward pass")] = 256,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="evaluate a fixed random subset of N images per split (the cache holds all)"),
    ] = None,
    ks: Annotated[str, typer.Option(help="comma-separated K values for P@K, R@K and kNN")] = "1,2,5,10",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 … or auto")] = "auto",
    cache_dir: Annotated[Path, typer.Option(help="decode cache folder (shared with msir-train)")] = Path(
        "~/.cache/msir/decoded"
    ).expanduser(),
    workers: Annotated[int | None, typer.Option(min=0, help="decode processes (default min(4, CPUs))")] = None,
    seed: Annotated[int, typer.Option(help="seed of the --limit subset")] = 0,
    test_fraction: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=0.99,
            help="dataset with one split only (a plain class folder): the held-out fraction msir-train tested on "
            "(its data.test_fraction); those images are the queries, the rest the database",
        ),
    ] = 0.2,
    rerank: Annotated[
        str, typer.Option(help="re-ranking of the retrieval results: none, aqe, dba or kreciprocal")
    ] = "none",
    rerank_shortlist: Annotated[int, typer.Option(min=1, help="results re-ordered per query (dba, kreciprocal)")] = 100,
    rerank_neighbours: Annotated[int, typer.Option(min=1, help="neighbours averaged by aqe / dba")] = 10,
    rerank_alpha: Annotated[float, typer.Option(min=0.0, help="similarity exponent of aqe / dba")] = 3.0,
    rerank_k1: Annotated[int, typer.Option(min=1, help="k-reciprocal k1")] = 20,
    rerank_k2: Annotated[int, typer.Option(min=1, help="k-reciprocal k2 (local query expansion)")] = 6,
    rerank_lambda: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="k-reciprocal weight of the original distance")
    ] = 0.3,
) -> None:
    """Evaluate a checkpoint: classification and retrieval metrics, plots and a Markdown report."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console)])
    try:
        k_values = [int(k) for k in ks.split(",") if k.strip()]
    except ValueError:
        _fail(f"--ks must be comma-separated integers, got {ks!r}")
    try:
        rerank_cfg = RerankConfig(
            method=rerank,  # type: ignore[arg-type]
            shortlist=rerank_shortlist,
            qe_neighbours=rerank_neighbours,
            alpha=rerank_alpha,
            k1=rerank_k1,
            k2=rerank_k2,
            lambda_value=rerank_lambda,
        )
    except RerankError as exc:
        _fail(f"--{exc}")
    dev = _device(device)
    out_dir = out if out is not None else Path("results/eval") / checkpoint.with_suffix("").name
    timings: dict[str, float] = {}

    try:
        loaded = load_checkpoint(checkpoint, device=dev)
        reader = open_dataset(kind, data)
    except (CheckpointError, DatasetError, ValueError, OSError) as exc:
        _fail(str(exc))
    meta = loaded.meta
    if list(reader.class_names) != list(meta.class_names):
        _fail(
            f"{data}: dataset classes {_short(reader.class_names)} differ from the checkpoint's "
            f"{_short(meta.class_names)} ({checkpoint}); evaluate on the dataset the model was trained for"
        )
    if reader.multi_label != meta.multi_label:
        _fail(f"{data}: dataset multi_label={reader.multi_label} but the checkpoint has {meta.multi_label}")
    if val_split is None and meta.multi_label and "val" in reader.splits():
        val_split = "val"

    def embedded(split: str) -> tuple[CachedSplit, Embedded]:
        started = time.perf_counter()
        try:
            cached = cached_split(reader, split, meta.preprocess, cache_dir, workers=workers)
        except (DatasetError, ImageDecodeError, OSError) as exc:
            _fail(str(exc))
        timings[f"decode_{split}"] = round(time.perf_counter() - started, 3)
        rows = _subset(len(cached), limit, seed)
        images = cached.images if rows is None else cached.images[rows]
        labels = cached.labels if rows is None else cached.labels[rows]
        ids = cached.item_ids if rows is None else [cached.item_ids[i] for i in rows]
        started = time.perf_counter()
        result = embed_split(loaded.model, images, labels, meta.preprocess, batch_size=batch_size, device=dev,
                             ids=list(ids), description=split)  # fmt: skip
        timings[f"embed_{split}"] = round(time.perf_counter() - started, 3)
        return cached, result

    splits = reader.splits()
    if len(splits) == 1 and query_split not in splits and db_split not in splits:
        # A single-split dataset: rebuild the exact held-out test set msir-train evaluated on (same ids, same
        # hash), query with it and search the rest, so no query is in its own database.
        only = splits[0]
        query, whole = embedded(only)
        pool, test_rows = carve_test(whole.labels, whole.ids, test_fraction)
        if not len(test_rows):
            _fail(f"{data}: --test-fraction {test_fraction:g} of split {only!r} holds out no image")
        db = query
        queries, database = whole.rows(test_rows), whole.rows(pool)
        query_split, db_split = f"{only}: held-out {test_fraction:g}", f"{only}: the rest"
        console.print(f"one split {only!r}: {len(test_rows)} held-out queries against {len(pool)} images")
    else:
        query, queries = embedded(query_split)
        if db_split == query_split:
            db, database = query, queries
        else:
            db, database = embedded(db_split)

    validation = None
    if meta.multi_label and val_split is not None and val_split in reader.splits():
        _, validation = embedded(val_split)

    try:
        evaluated = evaluate_embedded(
            queries,
            database,
            class_names=meta.class_names,
            multi_label=meta.multi_label,
            thresholds_from=validation,
            ks=k_values,
            exclude_self=db_split == query_split,
            device=dev,
            rerank=rerank_cfg,
            timings=timings,
        )
    except ValueError as exc:
        _fail(str(exc))
    classification, retrieval = evaluated["classification"], evaluated["retrieval"]

    skipped = {split.split: len(split.skipped) for split in (query, db)}
    run = {
        "checkpoint": str(checkpoint),
        "model": meta.model_name,
        "weights_sha256": meta.weights_sha256,
        "dataset": f"{reader.name} at {data}",
        "query_split": f"{query_split} ({len(queries)} images)",
        "db_split": f"{db_split} ({len(database)} images)",
        "limit": limit,
        "skipped_items": skipped,
        "threshold_split": val_split if validation is not None else None,
        "device": str(dev),
    }
    metrics = {"run": run, "timings_s": timings, "classification": classification, "retrieval": retrieval}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "metrics.json", metrics)
    plots = write_plots(
        out_dir, classification=classification, retrieval=retrieval, y_true=queries.labels, scores=queries.logits
    )
    report = write_markdown_report(metrics, out_dir / "report.md", plots, title=f"Evaluation of {checkpoint.name}")
    if reader.skipped:
        reader.skipped.write(out_dir / "skipped.csv")
    _summary(classification, retrieval)
    console.print(f"wrote {out_dir / 'metrics.json'}, {report} and {len(plots)} plots")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        _fail(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1 … or auto)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {name} asked for but torch.cuda.is_available() is False")
    return dev


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Sorted random rows, so a limited run still samples every class of a class-ordered split."""
    if limit is None or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _summary(classification: dict, retrieval: dict) -> None:
    table = Table(title="msir-eval")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if classification["task"] == "single_label":
        table.add_row("accuracy", _fmt(classification["accuracy"]))
        table.add_row("macro F1", _fmt(classification["macro"]["f1"]))
    else:
        table.add_row("macro F1 @0.5", _fmt(classification["macro"]["f1"]))
        if "tuned" in classification:
            table.add_row("macro F1 @tuned", _fmt(classification["tuned"]["macro"]["f1"]))
    table.add_row("macro AUC", _fmt(classification["macro"]["auc"]))
    for k in retrieval["ks"]:
        table.add_row(f"P@{k}", _fmt(retrieval["precision_at_k"][str(k)]))
    table.add_row("mAP@all", _fmt(retrieval["map_at_all"]))
    table.add_row("mAP@R", _fmt(retrieval["map_at_r"]))
    table.add_row("queries without relevant item", str(retrieval["queries_without_relevant"]))
    console.print(table)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _short(names: list[str]) -> str:
    return str(names) if len(names) <= 6 else f"[{', '.join(names[:6])}, … ({len(names)} classes)]"


def _fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


if __name__ == "__main__":
    app()
