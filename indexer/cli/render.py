"""Rendering of ``msir-index`` results: rich tables for people, one JSON document with ``--json``."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from indexer.duplicates import BackfillReport, DuplicateGroups
from indexer.ingest.pipeline import BuildReport
from indexer.predict import Prediction
from indexer.records import Hit, ImageRecord, VerifyReport


def _json(console: Console, value: Any) -> None:
    # Plain print (not print_json): no wrapping or highlighting, so output parses byte for byte.
    console.print(json.dumps(value, indent=2, default=str), soft_wrap=True, highlight=False, markup=False)


def build_report(console: Console, report: BuildReport, vectors: int, as_json: bool) -> None:
    if as_json:
        _json(console, {**report.to_json(), "vectors": vectors})
        return
    table = Table(title="indexing", show_header=False)
    for name, value in (
        ("listed", report.total),
        ("added", len(report.added)),
        ("already present (skipped)", len(report.already_present)),
        ("duplicates (same content)", len(report.duplicates)),
        ("failed (unreadable)", len(report.failed)),
        ("skipped while listing", len(report.listing_skipped)),
        ("already present, labels added", report.labelled),
        ("vectors in the index", vectors),
        ("images/s", f"{report.images_per_s:,.1f}"),
    ):
        table.add_row(name, str(value))
    console.print(table)
    if report.note:
        console.print(f"labels: {report.note}", soft_wrap=True)
    stages = Table(title="stages (wall time)")
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    stages.add_column("share", justify="right")
    for name, seconds, share in report.stage_table():
        stages.add_row(name, f"{seconds:.2f}", f"{share:.0%}")
    console.print(stages)
    cpu = report.timings.get("reader_cpu_s", 0.0)
    console.print(f"decoding CPU time in workers: {cpu:.2f} s")
    if report.report_path:
        console.print(f"skipped / failed / duplicate items listed in {report.report_path}")


def shard_report(console: Console, report: BuildReport, shard: str, source_items: int, as_json: bool) -> None:
    """One shard of a sharded build: its part of the source, what it added, and what to run next."""
    if as_json:
        _json(console, {**report.to_json(), "shard": shard, "source_items": source_items})
        return
    console.print(
        f"shard {shard}: {report.total} of {source_items} items; {len(report.added)} added, "
        f"{len(report.already_present)} already present, {len(report.duplicates)} duplicates, "
        f"{len(report.failed)} failed, {len(report.listing_skipped)} skipped while listing "
        f"({report.images_per_s:,.1f} images/s)",
        highlight=False,
    )
    console.print("when every shard has finished: msir-index rebuild DIR --db URL --checkpoint C (builds the index)")


def stats(console: Console, data: dict[str, Any], problems: list[str], as_json: bool) -> None:
    if as_json:
        _json(console, {**data, "problems": problems})
        return
    table = Table(title=f"collection {data['directory']}", show_header=False)
    index = data["index"]
    for name, value in (
        ("rows", data["rows"]),
        ("vectors", index["ntotal"]),
        ("index", f"{index['type']} {index.get('options') or ''}"),
        ("embedding dim", data["embedding_dim"]),
        ("checkpoint", f"{data['checkpoint']['path']} ({data['checkpoint']['model_name']})"),
        ("database", data["database"]),
        ("updated", data["updated_at"]),
    ):
        table.add_row(name, str(value))
    console.print(table)
    for title, counts in (
        ("splits", data["splits"]),
        ("labels", data["labels"]),
        ("sources", data["sources"]),
    ):
        sub = Table(title=title)
        sub.add_column(title[:-1])
        sub.add_column("images", justify="right")
        for key, n in list(counts.items())[:30]:
            sub.add_row(str(key), str(n))
        if len(counts) > 30:
            sub.add_row(f"… {len(counts) - 30} more", "")
        console.print(sub)
    for problem in problems:
        console.print(f"[bold red]problem:[/] {problem} (run `msir-index verify`)", soft_wrap=True)


def verify_report(console: Console, directory: Path, report: VerifyReport, as_json: bool) -> None:
    if as_json:
        _json(console, {"ok": report.ok, "problems": report.problems, **report.details})
        return
    if report.ok:
        console.print(
            f"[bold green]ok[/]: {directory}: {report.details['rows']} rows = {report.details['vectors']} "
            f"vectors, manifest and checkpoint agree"
        )
        return
    for problem in report.problems:
        console.print(f"[bold red]mismatch:[/] {problem}", highlight=False, soft_wrap=True)
    console.print(
        f"fix: `msir-index verify {directory} --repair` catches the index up (rebuilds it from the database on "
        f"drift) and removes orphan files; `msir-index rebuild {directory}` rebuilds the index",
        soft_wrap=True,
    )


def hits(console: Console, query: Path, found: list[Hit], prediction: Prediction, as_json: bool) -> None:
    if as_json:
        _json(console, {"query": str(query), "prediction": prediction.to_json(), "hits": [h.to_json() for h in found]})
        return
    # Plain lines, not a table: a table cuts long item paths at the terminal width, and a path is what people copy.
    # The item comes last and soft-wraps, so it is never cut whatever the width.
    say = partial(console.print, soft_wrap=True, highlight=False, markup=False)
    say(f"nearest to {query}")
    head = ", ".join(f"{label} {p:.2f}" for label, p in prediction.classifier)
    say(f"classifier: {head}")
    if prediction.knn is not None:
        knn = prediction.knn
        votes = ", ".join(f"{label} {p:.2f}" for label, p in knn.distribution)
        say(f"neighbours: {', '.join(knn.labels) or '-'} ({votes or 'no labelled neighbour'}; {knn.used} voted)")
    say(f"{'rank':>4} {'score':>6} {'id':>8}  labels / split / item")
    for rank, hit in enumerate(found, 1):
        rec = hit.record
        tags = " ".join(t for t in (",".join(rec.labels) or "-", rec.split or "-"))
        say(f"{rank:>4} {hit.score:6.4f} {hit.id:>8}  {tags}  {rec.uri}")


def metrics(console: Console, data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _json(console, data)
        return
    table = Table(title=f"retrieval: {data['query_split']} queries vs {data['db_split']} database")
    table.add_column("metric")
    for k in data["ks"]:
        table.add_column(f"@{k}", justify="right")
    keys = ["precision_at_k", "recall_at_k", "hit_rate_at_k"]
    keys += ["knn_sample_f1"] if data["multi_label"] else ["knn_accuracy"]
    for key in keys:
        values = data[key]
        table.add_row(key, *(f"{values[str(k)]:.4f}" if values[str(k)] is not None else "-" for k in data["ks"]))
    console.print(table)
    for key in ("map_at_all", "map_at_r"):
        value = data[key]
        console.print(f"{key}: {value:.4f}" if value is not None else f"{key}: -")
    console.print(
        f"{data['num_queries']} queries, {data['num_database']} database images "
        f"({data['skipped_without_single_label']} without a usable label skipped)"
    )


def duplicate_groups(
    console: Console,
    groups: DuplicateGroups,
    records: dict[int, ImageRecord],
    as_json: bool,
    backfill: BackfillReport | None = None,
) -> None:
    """Every group with its members' cosine to the representative and their items (uri), after what the copy
    descriptor backfill did (rows given one, rows skipped with the reason)."""

    def member(i: int, score: float) -> dict[str, Any]:
        rec = records.get(i)
        return {"id": i, "score": round(score, 6), "uri": rec.uri if rec else None, "labels": rec.labels if rec else []}

    found = [
        [member(i, s) for i, s in zip(*(part.tolist() for part in groups.members(g)), strict=True)]
        for g in range(len(groups))
    ]
    if as_json:
        filled = (
            None
            if backfill is None
            else {"filled": backfill.filled, "skipped": [{"id": i, "reason": r} for i, r in backfill.skipped]}
        )
        _json(console, {"threshold": groups.threshold, "images": groups.vectors, "exact": groups.exact,
                        "grouped_images": groups.grouped, "backfill": filled, "groups": found})  # fmt: skip
        return
    say = partial(console.print, soft_wrap=True, highlight=False, markup=False)
    if backfill is not None and (backfill.filled or backfill.skipped):
        say(f"copy descriptors computed for {backfill.filled} older row(s); {len(backfill.skipped)} skipped")
        for i, reason in backfill.skipped:
            say(f"  skipped {i}: {reason}")
    say(f"{len(found)} near-duplicate groups ({groups.grouped} of {groups.vectors} images) at cosine >= "
        f"{groups.threshold:.4f}")  # fmt: skip
    for g, members in enumerate(found, 1):
        say(f"group {g} ({len(members)} images)")
        for m in members:
            say(f"  {m['score']:6.4f} {m['id']:>8}  {','.join(m['labels']) or '-'}  {m['uri']}")
