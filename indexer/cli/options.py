"""The options, argument types and shared helpers of ``msir-index`` (:mod:`indexer.cli` holds the commands):
consoles, logging set-up, the one-line refusals with their exit codes, the image sources and the index options."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, get_type_hints

import typer
from rich.console import Console
from rich.logging import RichHandler

from indexer.cli.explain import EXPLAINED, explain
from indexer.collection import Collection
from indexer.ingest.sources import Source, from_dataset, from_files, from_folder
from indexer.vectors.backends import BACKENDS, BackendConfig
from indexer.vectors.faiss_index import DEFAULT_OPTIONS, INDEX_TYPES
from models import ImageDecodeError
from msir_core.exit_codes import ExitCode, debug_enabled, one_line
from msir_core.logs import debug_requested, quiet_library_loggers

console = Console()
err = Console(stderr=True)
T = TypeVar("T")

Dir = Annotated[
    Path, typer.Argument(help="Collection folder (manifest.json, index.faiss or index.milvus.json, metadata.db).")
]
Db = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL (default: metadata.db in DIR).")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
Runtime = Annotated[
    str,
    typer.Option(
        "--runtime",
        # The server's setting too, so one MSIR_RUNTIME picks the runtime of the indexer and the service alike.
        envvar="MSIR_RUNTIME",
        help=(
            "auto | torch | onnx. auto: ONNX Runtime on the CPU when the checkpoint's export can be made and verified "
            "(cached beside the checkpoint or in the collection), else torch with the reason logged."
        ),
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ImageIds = Annotated[list[int] | None, typer.Option("--id", help="Image id (repeatable).")]
ImagePaths = Annotated[list[str] | None, typer.Option("--path", help="Image path or uri (repeatable).")]
Checkpoint = Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Checkpoint (.safetensors + .json).")]
# The split recorded for --data is the dataset's own; a plain class folder has one, "all" (users asked).
DATA_HELP = (
    "Dataset root (any format msir_data reads); each image keeps its dataset split, and a plain "
    "ROOT/<class>/* folder is one split, recorded as 'all'."
)
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Debug logging, library start-up lines too (or MSIR_LOG_LEVEL=debug).")
]
# Index options shared by `build` and `rebuild` (None: the index type's default).
NList = Annotated[int | None, typer.Option(help="ivfpq: inverted lists (default ~4 sqrt(N)).")]
PqM = Annotated[int | None, typer.Option("--m", help="ivfpq: PQ sub-quantizers (divides dim).")]
NProbe = Annotated[int | None, typer.Option(help="ivfpq: lists probed per query.")]
HnswM = Annotated[int | None, typer.Option("--hnsw-m", help="hnsw: graph degree M.")]
EfSearch = Annotated[int | None, typer.Option("--ef-search", help="hnsw: efSearch.")]
SHARD_HELP = (
    "I/N: index only shard I (0-based) of N of the source, into the --db collection, beside the other shards' "
    "processes (any host); then `rebuild` builds the index once. Default under torchrun: RANK/WORLD_SIZE."
)
# Where the vectors live (indexer.vectors.backends). The URI is recorded in manifest.json; the token never is.
Backend = Annotated[str | None, typer.Option("--backend", help="faiss (default: files in DIR) | milvus")]
MilvusUri = Annotated[
    str | None,
    typer.Option(
        "--milvus-uri",
        help="milvus: http://host:19530 (standalone/cluster) or a milvus-lite FILE.db (default DIR/milvus.db); "
        "on commands other than build/rebuild it overrides the recorded URI.",
    ),
]
MilvusToken = Annotated[
    str | None, typer.Option("--milvus-token", envvar="MSIR_MILVUS_TOKEN", help="milvus: token (user:password).")
]


@dataclass(frozen=True)
class Opening:
    """How a command reaches an existing collection. Every command that opens one takes these options, declared
    once in :data:`OPENING_OPTIONS` and added by :func:`opens_collection` (so none can lack, say, the Milvus URI)."""

    checkpoint: Path | None = None
    db: str | None = None
    milvus_uri: str | None = None
    milvus_token: str | None = None

    def backend_config(self) -> BackendConfig:
        return BackendConfig(milvus_uri=self.milvus_uri, milvus_token=self.milvus_token)

    def open(self, directory: Path, device: str = "cpu", **options: Any) -> Collection:
        return Collection.open(
            directory, self.checkpoint, self.db, device, backend_config=self.backend_config(), **options
        )


OPENING_OPTIONS: dict[str, Any] = {
    "checkpoint": Checkpoint,
    "db": Db,
    "milvus_uri": MilvusUri,
    "milvus_token": MilvusToken,
}
F = TypeVar("F", bound=Callable[..., Any])


def opens_collection(command: F) -> F:
    """A command body taking ``opening: Opening`` becomes a typer command with the options of
    :data:`OPENING_OPTIONS` (typer reads the signature and annotations set here)."""
    hints = get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != "opening"
    ]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in OPENING_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opening = Opening(**{name: kwargs.pop(name, None) for name in OPENING_OPTIONS})
        return command(*args, opening=opening, **kwargs)

    parameters = own + added
    wrapper.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return wrapper  # type: ignore[return-value]


def setup_logging(verbose: bool) -> None:
    debug = debug_requested(verbose)  # --verbose or MSIR_LOG_LEVEL=debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
    )
    quiet_library_loggers(debug)


def fail(message: str, code: int = ExitCode.USAGE, error: BaseException | None = None) -> NoReturn:
    if error is not None and debug_enabled(logging.getLogger().isEnabledFor(logging.DEBUG)):
        err.print("".join(traceback.format_exception(error)), highlight=False, markup=False)
    err.print(f"[bold red]error:[/] {one_line(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def guarded(fn: Callable[[], T], directory: Path) -> T:
    """Run a command body; user, configuration and file errors become one line and their class's exit code."""
    try:
        return fn()
    except ImageDecodeError as error:
        fail(str(error), ExitCode.DATA, error)
    except EXPLAINED as error:
        fail(*explain(error, directory), error)
    except ValueError as error:  # DatasetError, bad option values
        fail(str(error), ExitCode.USAGE, error)


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


def image_source(
    data: Path | None,
    kind: str,
    split: str | None,
    folder: Path | None,
    manifest: Path | None,
    files: list[Path] | None,
    limit: int | None,
) -> Source:
    given = [name for name, v in (("--data", data), ("--folder", folder), ("--manifest", manifest)) if v]
    if files:
        given.append("FILES")
    if len(given) != 1:
        fail(f"give exactly one image source (--data ROOT, --folder F, --manifest CSV or FILES), got {given or 'none'}")
    if data is not None:
        return from_dataset(data, kind, split, limit=limit)
    if manifest is not None:
        return from_dataset(manifest, "manifest", split, limit=limit)
    if folder is not None:
        return from_folder(folder, split=split, limit=limit)
    return from_files((files or [])[:limit] if limit else files or [], split=split)


def backend_config(uri: str | None, token: str | None) -> BackendConfig:
    return BackendConfig(milvus_uri=uri, milvus_token=token)


def check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        fail(f"--backend {backend!r} is not one of {list(BACKENDS)}")


def index_options(
    index: str,
    nlist: int | None,
    m: int | None,
    nprobe: int | None,
    hnsw_m: int | None,
    ef_search: int | None,
) -> dict[str, Any]:
    if index not in INDEX_TYPES:
        fail(f"--index {index!r} is not one of {list(INDEX_TYPES)}")
    given = {"nlist": nlist, "m": m, "nprobe": nprobe, "M": hnsw_m, "ef_search": ef_search}
    flags = {
        "nlist": "--nlist",
        "m": "--m",
        "nprobe": "--nprobe",
        "M": "--hnsw-m",
        "ef_search": "--ef-search",
    }
    stray = [flags[k] for k, v in given.items() if v is not None and k not in DEFAULT_OPTIONS[index]]
    if stray:
        fail(f"{', '.join(stray)} do not apply to --index {index}")
    return {k: v for k, v in given.items() if v is not None}
