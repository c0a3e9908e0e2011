"""``msir-index``: build, extend, check and query image collections.

Exit codes (``msir_core.exit_codes.ExitCode``, one line on stderr naming the file and the fix; the traceback only with
``--verbose`` or ``MSIR_LOG_LEVEL=debug``): 0 ok, 1 ``verify`` found a mismatch, 2 usage or configuration error,
3 collection unusable or inconsistent, 4 checkpoint unusable or not the collection's, 5 metadata database
unusable or unreachable, 6 image file unreadable.
Human output is rich tables on stdout; ``--json`` prints one JSON document instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from indexer import backup as backups
from indexer.cli import render as out
from indexer.cli.options import (
    DATA_HELP,
    SHARD_HELP,
    Backend,
    Checkpoint,
    Db,
    Device,
    Dir,
    EfSearch,
    HnswM,
    ImageIds,
    ImagePaths,
    Json,
    MilvusToken,
    MilvusUri,
    NList,
    NProbe,
    Opening,
    PqM,
    Runtime,
    Verbose,
    backend_config,
    check_backend,
    console,
    default_workers,
    fail,
    guarded,
    image_source,
    index_options,
    opens_collection,
    setup_logging,
)
from indexer.collection import Collection
from indexer.duplicates import DEFAULT_THRESHOLD, backfill_copy_descriptors, stored_groups
from indexer.ingest.shards import Shard, build_shard
from indexer.manifest import Manifest
from indexer.metadata.queries import SCAN_BATCH
from indexer.predict import predict
from indexer.vectors.auto import choose_index, parse_budget
from models import open_image
from msir_core.retrieval.rerank import RerankConfig, RerankError

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def build(
    directory: Dir,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Checkpoint (.safetensors + .json).")],
    data: Annotated[Path | None, typer.Option(help=DATA_HELP)] = None,
    kind: Annotated[str, typer.Option(help="Dataset kind for --data (auto detects).")] = "auto",
    split: Annotated[str | None, typer.Option(help="Only this split of --data/--manifest.")] = None,
    folder: Annotated[
        Path | None, typer.Option(help="A folder of images (recursive); root/<class>/* is labelled by folder.")
    ] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV manifest: path,label[,split].")] = None,
    db: Db = None,
    index: Annotated[str | None, typer.Option("--index", help="flat (default) | ivfpq | hnsw")] = None,
    nlist: NList = None,
    m: PqM = None,
    nprobe: NProbe = None,
    hnsw_m: HnswM = None,
    ef_search: EfSearch = None,
    backend: Backend = None,
    milvus_uri: MilvusUri = None,
    milvus_token: MilvusToken = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass / transaction.")] = 256,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (0: in-process).")] = None,
    device: Device = "auto",
    runtime: Runtime = "auto",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted build (always on: kept for clarity).")] = False,
    limit: Annotated[int | None, typer.Option(help="Index at most N images of the source.")] = None,
    save_every: Annotated[float, typer.Option(help="Seconds between index saves (rows are safe anyway).")] = 30.0,
    shard: Annotated[str | None, typer.Option("--shard", help=SHARD_HELP)] = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Create a collection (or continue one: items already stored are skipped) and index a source."""
    setup_logging(verbose)
    options = index_options(index or "flat", nlist, m, nprobe, hnsw_m, ef_search)
    check_backend(backend)
    config = backend_config(milvus_uri, milvus_token)
    log = logging.getLogger(__name__)

    def run() -> None:
        source = image_source(data, kind, split, folder, manifest, None, limit)
        part = Shard.parse(shard) if shard is not None else Shard.from_env()
        if part is not None and part.count > 1:
            if db is None:
                fail("--shard needs --db: every shard writes into one database server (PostgreSQL)")
            n_workers = default_workers() if workers is None else workers
            report = build_shard(
                directory, checkpoint, db, source, part, device=device, batch_size=batch_size, workers=n_workers,
                progress=not json_out,
            )  # fmt: skip
            out.shard_report(console, report, str(part), len(source.items), json_out)
            return
        if Manifest.exists(directory):
            spec = Manifest.load(directory).index
            if index is not None and index != spec.type:
                fail(f"{directory} already uses a {spec.type} index; `msir-index rebuild --index {index}` changes it")
            if backend is not None and backend != spec.backend:
                fail(
                    f"{directory} uses the {spec.backend} backend; `msir-index rebuild --backend {backend}` changes it"
                )
            col = Collection.open(directory, checkpoint, db, device, runtime=runtime, backend_config=config)
            log.info("%s exists: continuing (items already stored are skipped)", directory)
        else:
            if resume:
                log.info("%s: nothing to resume, starting a new collection", directory)
            col = Collection.create(
                directory, checkpoint, db, index or "flat", options, device, runtime, backend or "faiss", config
            )
        col.save_interval_s = save_every
        with col:
            report = col.add_source(
                source,
                batch_size=batch_size,
                workers=default_workers() if workers is None else workers,
                progress=not json_out,
            )
            out.build_report(console, report, col.ntotal, json_out)

    guarded(run, directory)


@app.command()
@opens_collection
def add(
    directory: Dir,
    files: Annotated[list[Path] | None, typer.Argument(help="Image files.")] = None,
    folder: Annotated[
        Path | None, typer.Option(help="A folder of images (recursive); root/<class>/* is labelled by folder.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help=DATA_HELP)] = None,
    kind: Annotated[str, typer.Option(help="Dataset kind for --data.")] = "auto",
    manifest: Annotated[Path | None, typer.Option(help="CSV manifest.")] = None,
    split: Annotated[str | None, typer.Option(help="Split of the dataset / split recorded for files.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass / transaction.")] = 256,
    workers: Annotated[int | None, typer.Option(help="Decoding processes (0: in-process).")] = None,
    device: Device = "auto",
    runtime: Runtime = "auto",
    json_out: Json = False,
    verbose: Verbose = False,
    opening: Opening = Opening(),  # filled by @opens_collection from the options it adds
) -> None:
    """Add images to an existing collection (duplicates by content are reported, not indexed twice)."""
    setup_logging(verbose)

    def run() -> None:
        source = image_source(data, kind, split, folder, manifest, files, None)
        with opening.open(directory, device, runtime=runtime) as col:
            n_workers = default_workers() if workers is None else workers
            report = col.add_source(source, batch_size=batch_size, workers=n_workers, progress=not json_out)
            out.build_report(console, report, col.ntotal, json_out)

    guarded(run, directory)


@app.command()
@opens_collection
def remove(
    directory: Dir,
    ids: ImageIds = None,
    paths: ImagePaths = None,
    json_out: Json = False,
    verbose: Verbose = False,
    opening: Opening = Opening(),  # filled by @opens_collection from the options it adds
) -> None:
    """Remove images (database rows and vectors)."""
    setup_logging(verbose)
    if not ids and not paths:
        fail("give --id and/or --path")

    def run() -> None:
        with opening.open(directory) as col:
            removed = (col.remove(ids) if ids else 0) + (col.remove_paths(paths) if paths else 0)
            if json_out:
                console.print_json(json.dumps({"removed": removed, "rows": col.store.count()}))
            else:
                console.print(f"removed {removed} image(s); {col.ntotal} remain")

    guarded(run, directory)


@app.command()
@opens_collection
def label(
    directory: Dir,
    ids: ImageIds = None,
    paths: ImagePaths = None,
    set_labels: Annotated[str | None, typer.Option("--set", help="Replace the labels: 'a|b' ('' for none).")] = None,
    add_labels: Annotated[list[str] | None, typer.Option("--add", help="Add a label (repeatable).")] = None,
    remove_labels: Annotated[list[str] | None, typer.Option("--remove", help="Remove a label (repeatable).")] = None,
    metadata: Annotated[str | None, typer.Option("--metadata", help="JSON object merged into the metadata.")] = None,
    replace_metadata: Annotated[bool, typer.Option(help="Replace the metadata instead of merging.")] = False,
    json_out: Json = False,
    verbose: Verbose = False,
    opening: Opening = Opening(),  # filled by @opens_collection from the options it adds
) -> None:
    """Change the labels and/or metadata of stored images (no re-embedding); running servers see it at once."""
    setup_logging(verbose)
    if not ids and not paths:
        fail("give --id and/or --path")
    if set_labels is None and not add_labels and not remove_labels and metadata is None:
        fail("nothing to change: give --set, --add, --remove and/or --metadata")
    meta: dict[str, Any] | None = None
    if metadata is not None:
        try:
            meta = json.loads(metadata)
        except json.JSONDecodeError as error:
            fail(f"--metadata: not valid JSON ({error.msg} at position {error.pos})")
        if not isinstance(meta, dict):
            fail(f"--metadata: expected a JSON object, got {type(meta).__name__}")
    labels = None if set_labels is None else [x.strip() for x in set_labels.split("|") if x.strip()]

    def run() -> None:
        # Milvus keeps labels for its scalar filters: relabelling writes to it, so it must be reachable here.
        with opening.open(directory) as col:
            wanted = list(ids or []) + (col.ids_for_paths(paths) if paths else [])
            changed = col.edit(
                wanted,
                labels=labels,
                add_labels=add_labels or (),
                remove_labels=remove_labels or (),
                metadata=meta,
                replace_metadata=replace_metadata,
            )
            missing = sorted(set(ids or []) - set(changed))
            if json_out:
                console.print_json(json.dumps({"changed": changed, "not_found": missing}))
            else:
                console.print(f"changed {len(changed)} image(s)" + (f"; no image with id {missing}" if missing else ""))

    guarded(run, directory)


@app.command()
def rebuild(
    directory: Dir,
    index: Annotated[
        str | None, typer.Option("--index", help="Switch to this index type; auto: chosen by --memory-budget.")
    ] = None,
    memory_budget: Annotated[
        str | None, typer.Option("--memory-budget", help="With --index auto: bytes the index may use (8G, 512M).")
    ] = None,
    nlist: NList = None,
    m: PqM = None,
    nprobe: NProbe = None,
    hnsw_m: HnswM = None,
    ef_search: EfSearch = None,
    backend: Annotated[str | None, typer.Option("--backend", help="Switch to this backend: faiss | milvus.")] = None,
    milvus_uri: MilvusUri = None,
    milvus_token: MilvusToken = None,
    checkpoint: Checkpoint = None,
    db: Db = None,
    scan_batch: Annotated[
        int,
        typer.Option(
            "--scan-batch",
            min=1,
            help="Rows per fetch from the database (one server-side cursor): memory beyond the index holds one batch.",
        ),
    ] = SCAN_BATCH,
    verbose: Verbose = False,
) -> None:
    """Rebuild the index (FAISS files or Milvus collection) from the embeddings stored in the database (no image
    is decoded).

    After a sharded build (``build --shard I/N``), a DIR without a manifest gets the collection of --db, with its
    index built once from every shard's rows."""
    setup_logging(verbose)
    check_backend(backend)

    def run() -> None:
        config = backend_config(milvus_uri, milvus_token)
        if not Manifest.exists(directory):
            if checkpoint is None or db is None:
                fail(f"{directory} is not a collection yet: give --checkpoint and --db to build it from the database")
            options = index_options(index or "flat", nlist, m, nprobe, hnsw_m, ef_search)
            kind = index or "flat"
            with Collection.create(
                directory, checkpoint, db, kind, options, "cpu", backend=backend or "faiss", backend_config=config,
                progress=True, scan_batch=scan_batch,
            ) as col:  # fmt: skip
                where = col.store.display_url
                console.print(f"built the {col.index_type} index of {directory} from {where}: {col.ntotal} vectors")
            return
        # Not caught up on open: the rebuild reads every row anyway, and catching up first would add the rows the
        # index lags by one at a time (all of them after a bulk load into the database) only to throw them away.
        with Collection.open(
            directory, checkpoint, db, "cpu", strict=False, backend_config=config, catch_up=False
        ) as col:
            if index == "auto":
                if memory_budget is None:
                    fail("--index auto needs --memory-budget (e.g. 8G)")
                if any(v is not None for v in (nlist, m, nprobe, hnsw_m, ef_search)):
                    fail("--index auto chooses the options itself: leave out --nlist/--m/--nprobe/--hnsw-m/--ef-search")
                budget = parse_budget(memory_budget)
                rows, dim = col.store.count(), col.manifest.embedding_dim
                choice = choose_index(rows, dim, budget)
                col.set_index_type(choice.type, choice.options, backend=backend)
                col.manifest.index = col.manifest.index.model_copy(update={"auto": choice.record(rows, dim, budget)})
                console.print(f"--index auto: {choice.type} ({choice.reason}; about {choice.estimated_bytes} bytes)")
            elif memory_budget is not None:
                fail("--memory-budget applies to --index auto only")
            elif (
                backend is not None
                or index is not None
                or any(v is not None for v in (nlist, m, nprobe, hnsw_m, ef_search))
            ):
                kind = index or col.manifest.index.type
                options = index_options(kind, nlist, m, nprobe, hnsw_m, ef_search)
                col.set_index_type(kind, options, backend=backend)
            col.scan_batch = scan_batch
            col.rebuild(progress=True)
            where = col.manifest.index.backend
            console.print(f"rebuilt the {col.index_type} index ({where}) of {directory}: {col.ntotal} vectors")

    guarded(run, directory)


@app.command()
@opens_collection
def stats(
    directory: Dir,
    json_out: Json = False,
    opening: Opening = Opening(),  # filled by @opens_collection from the options it adds
) -> None:
    """Counts per split / label / source, index type and sizes."""
    setup_logging(False)

    def run() -> None:
        with opening.open(directory, strict=False) as col:
            out.stats(console, col.stats(), col.problems, json_out)

    guarded(run, directory)


@app.command()
def backup(
    directory: Dir,
    archive: Annotated[Path, typer.Argument(help="The archive to write (a tar; written aside, then renamed).")],
    db: Db = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Write a consistent snapshot of the collection (rows as JSON lines, its files, the index of the current
    generation, sha256 of every member) to ARCHIVE, taken under the collection's writer lock."""
    setup_logging(verbose)
    report = guarded(lambda: backups.backup(directory, archive, db), directory)
    _print_report(
        report,
        json_out,
        f"backed up {directory} to {archive}: {report.rows['images']} images, {report.files} files, index "
        f"generation {report.generation} ({report.bytes:,} bytes)"
        + (f"; {report.external_files} file(s) outside the collection referenced, not copied"
           if report.external_files else ""),
    )  # fmt: skip


def _print_report(report: Any, json_out: bool, line: str) -> None:
    """A backup's or restore's report: the dataclass as JSON, or one line."""
    if json_out:
        console.print_json(json.dumps(dataclasses.asdict(report)))
    else:
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def restore(
    archive: Annotated[Path, typer.Argument(help="An archive written by `msir-index backup`.")],
    target: Annotated[Path, typer.Argument(help="The new collection folder (must not exist or be empty).")],
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            "--db",
            help="Restore the rows into this empty database (default: metadata.db "
            "in TARGET); SQLite and PostgreSQL either way.",
        ),
    ] = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Restore a backup under TARGET (any path) and into any database; every member is checked against its sha256
    first, and a damaged archive is refused leaving nothing behind."""
    setup_logging(verbose)
    report = guarded(lambda: backups.restore(archive, target, database_url), target)
    _print_report(
        report,
        json_out,
        f"restored {archive} into {target} (database {report.database}): {report.rows['images']} images, "
        f"{report.files} files, index generation {report.generation}",
    )


@app.command()
@opens_collection
def verify(
    directory: Dir,
    repair: Annotated[bool, typer.Option("--repair", help="Fix what can be fixed, say what was done.")] = False,
    sample: Annotated[
        int | None,
        typer.Option(
            "--sample",
            min=1,
            help="Check about N rows drawn from the database and N ids from the index, plus the exact counts, "
            "instead of scanning every row and file (huge collections; a clean sample is evidence, not proof).",
        ),
    ] = None,
    json_out: Json = False,
    verbose: Verbose = False,
    opening: Opening = Opening(),  # filled by @opens_collection from the options it adds
) -> None:
    """Check database <-> index <-> manifest <-> files (ids, index lag, counts, dimension, checkpoint, orphan and
    missing files); exit 1 on any mismatch. --repair catches the index up (rebuilds it on drift), removes orphan
    files, then checks again."""
    setup_logging(verbose)

    def run() -> bool:
        # Not caught up on open: a lagging index file is reported, not silently repaired.
        with opening.open(directory, strict=False, catch_up=False) as col:
            actions = col.repair() if repair else []
            report = col.verify(sample)
        if repair:
            report.details["repaired"] = actions
            if not json_out:
                for line in actions or ["nothing to repair"]:
                    console.print(f"repair: {line}", highlight=False, soft_wrap=True)
        out.verify_report(console, directory, report, json_out)
        return report.ok

    if not guarded(run, directory):
        raise typer.Exit(1)


@app.command()
@opens_collection
def search(
    directory: Dir,
    image: Annotated[Path, typer.Option("--image", help="Query image file.")],
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 10,
    label: Annotated[list[str] | None, typer.Option("--label", help="Keep images with this label.")] = None,
    split: Annotated[str | None, typer.Option(help="Keep images of this split.")] = None,
    rerank: Annotated[
        str, typer.Option(help="Re-ranking: none, aqe, dba or kreciprocal (measured in results/RESULTS.md).")
    ] = "none",
    min_score: Annotated[
        float | None, typer.Option(min=-1.0, max=1.0, help="Drop results scoring below this (-1..1).")
    ] = None,
    device: Device = "auto",
    runtime: Runtime = "auto",
    json_out: Json = False,
    opening: Opening = Opening(),  # filled by @opens_collection from the options it adds
) -> None:
    """The k images most similar to --image, with its predicted class (classifier head and neighbours' vote)."""
    setup_logging(False)

    def run() -> None:
        try:
            how = RerankConfig(method=rerank)  # type: ignore[arg-type]
        except RerankError as exc:
            fail(f"--{exc}")
        with opening.open(directory, device, runtime=runtime) as col:
            emb = col.embedder
            query = emb.embed_images([open_image(image, max_pixels=64_000_000)])
            hits = col.search(query.embeddings, k, labels=label, split=split, rerank=how)[0]
            hits = [h for h in hits if min_score is None or h.score >= min_score]
            out.hits(console, image, hits, predict(query.logits[0], hits, emb.class_names, emb.multi_label), json_out)

    guarded(run, directory)


@app.command()
@opens_collection
def duplicates(
    directory: Dir,
    threshold: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Cosine threshold: images at least this similar are duplicates (default: the calibrated one, "
            "results/benchmarks/duplicates.json).",
        ),
    ] = DEFAULT_THRESHOLD,
    backfill: Annotated[
        bool,
        typer.Option(
            help="First compute the copy descriptor of rows stored without one (before migration 0004) from their "
            "files; unreadable files are reported and their rows skipped."
        ),
    ] = True,
    json_out: Json = False,
    opening: Opening = Opening(),  # filled by @opens_collection from the options it adds
) -> None:
    """Near-duplicate groups: re-encoded, resized, cropped, flipped or re-coloured copies among the stored images
    (exact copies are never stored twice). Compares the stored copy descriptors; only rows stored without one
    (by an older msir) have their file decoded, once."""
    setup_logging(False)
    if threshold <= 0:
        fail(f"--threshold {threshold}: expected a cosine above 0 and at most 1")

    def run() -> None:
        with opening.open(directory) as col:
            filled = backfill_copy_descriptors(col.store, col.directory) if backfill else None
            groups = stored_groups(col.store, threshold)
            records = col.get_many(groups.ids.tolist())
        out.duplicate_groups(console, groups, records, json_out, filled)

    guarded(run, directory)


@app.command("eval")
@opens_collection
def evaluate(
    directory: Dir,
    query_split: Annotated[str, typer.Option(help="Queries: stored vectors of this split.")] = "test",
    db_split: Annotated[str, typer.Option(help="Database: stored vectors of this split.")] = "train",
    ks: Annotated[str, typer.Option(help="Comma-separated K values.")] = "1,5,10",
    json_out: Json = False,
    opening: Opening = Opening(),  # filled by @opens_collection from the options it adds
) -> None:
    """Retrieval metrics of the collection's stored embeddings (labels from the database)."""
    setup_logging(False)

    def run() -> None:
        from indexer.evaluate import evaluate_collection

        try:
            k_values = [int(v) for v in ks.split(",") if v.strip()]
        except ValueError:
            fail(f"--ks {ks!r}: expected comma-separated integers such as 1,5,10")
        with opening.open(directory) as col:
            metrics = evaluate_collection(col, query_split, db_split, k_values)
        out.metrics(console, metrics, json_out)

    guarded(run, directory)


if __name__ == "__main__":
    app()
