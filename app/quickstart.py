"""``python -m app.quickstart`` (``make demo``): from a fresh clone to a running search service in one command.

1. Checks the pretrained checkpoint shipped in ``demo/checkpoint/`` (it is never downloaded).
2. Builds a collection (SQLite + FAISS) of the images shipped in ``demo/images/`` — or of ``--data DIR``, any
   ImageFolder (``DIR/[<split>/]<class>/*``, labelled) or plain folder of images (unlabelled) — under
   ``var/demo/``. A later run reuses it when the checkpoint and the image set are unchanged (file names, sizes
   and modification times), continues it when an earlier build was interrupted, and rebuilds it otherwise.
3. Serves it with ``msir-serve`` (``app.cli``) on http://127.0.0.1:8000 and prints the URL, curl examples and
   the demo's API key (random, generated once per demo folder into ``var/demo/api_key``; there is no default).

Ctrl-C stops the server cleanly. Exit codes: 0 ok (also after Ctrl-C), 2 something missing or unusable (the
message says what), 130 interrupted while building.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from app.own_model import OwnModel, OwnModelError
from msir_core.logs import debug_requested, quiet_library_loggers

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "demo" / "images"
DEMO_CHECKPOINT = REPO / "demo" / "checkpoint" / "mscfnet4_cifar10.safetensors"
DEFAULT_VAR_DIR = REPO / "var" / "demo"
DATASET_CACHE = Path("~/.cache/msir/datasets").expanduser()
STATE_FILE = "demo-state.json"
KEY_FILE = "api_key"
STATE_VERSION = 1
# Above this many images, decoding runs in worker processes; below it their start-up costs more than it saves.
IN_PROCESS_MAX = 5000

logger = logging.getLogger("app.quickstart")


class DemoError(Exception):
    """Something the demo needs is missing or unusable; the message says what and how to fix it."""


@dataclass(frozen=True)
class DemoCollection:
    """A collection ready to serve."""

    directory: Path
    source: Path
    images: int  # vectors in the index
    labelled: bool
    action: str  # "reused" | "built" | "resumed"
    seconds: float


# -- inputs ----------------------------------------------------------------------------------------------------
def check_checkpoint(checkpoint: Path) -> Path:
    """The ``.safetensors`` path, or :class:`DemoError` naming what is missing."""
    from models.checkpoint import CheckpointError, checkpoint_paths

    try:
        weights, meta = checkpoint_paths(checkpoint)
    except CheckpointError as error:
        raise DemoError(str(error)) from error
    missing = [p for p in (weights, meta) if not p.is_file()]
    if missing:
        shown = ", ".join(_show(p) for p in missing)
        raise DemoError(
            f"the demo checkpoint is missing: {shown} not found. The demo needs a trained checkpoint "
            f"(NAME.safetensors + NAME.json); the repository ships it as {_show(DEMO_CHECKPOINT)} (+ .json). "
            "Train one with `msir-train --config configs/cnn/mscfnet4_cifar10.yaml` and copy its best "
            "checkpoint there, or pass another with --checkpoint. See demo/README.md."
        )
    return weights


def image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, hidden entries ignored), sorted: what a build would read."""
    from msir_data.base import IMAGE_EXTENSIONS, is_hidden

    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(is_hidden(Path(part)) for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def fingerprint(folder: Path, files: Sequence[Path]) -> str:
    """Identity of an image set: relative names, sizes and modification times (cheap on any folder size)."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def collection_dir_for(data: Path | None, var_dir: Path, split: str | None = None) -> Path:
    """``var/demo/collection`` for the shipped images, ``var/demo/<name>[-<split>]-<hash>`` for ``--data DIR``."""
    if data is None:
        return var_dir / "collection"
    resolved = data.resolve()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", resolved.name).strip("-.") or "data"
    key = str(resolved) if split is None else f"{resolved}\x00{split}"
    suffix = f"-{re.sub(r'[^A-Za-z0-9]+', '', split)[:16]}" if split else ""
    return var_dir / f"{name[:40]}{suffix}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def api_key(var_dir: Path) -> str:
    """The demo folder's API key: generated once (random, 0600), then reused."""
    path = var_dir / KEY_FILE
    if path.is_file():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
    from msir_core.atomic import atomic_write_text

    key = secrets.token_urlsafe(32)
    # A secret: owner-only, whatever the umask (the temp file is 0600 from creation too).
    atomic_write_text(path, key + "\n", mode=0o600)
    return key


# -- build -----------------------------------------------------------------------------------------------------
def _read_state(directory: Path) -> dict[str, Any]:
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else {}


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    from msir_core.atomic import atomic_write_text

    atomic_write_text(directory / STATE_FILE, json.dumps({"version": STATE_VERSION, **state}, indent=2) + "\n")


def _source(folder: Path, files: Sequence[Path], split: str | None = None) -> tuple[Any, bool]:
    """(indexer source, labelled): a labelled dataset in any format msir_data reads (an ImageFolder, ISIC 2018,
    ChestX-ray14, a CSV manifest, ...) gives its labels, anything else is a plain folder. ``split`` indexes one
    split of a labelled dataset only (e.g. the training images, the test images then being the queries)."""
    from indexer.ingest.sources import from_dataset, from_files
    from msir_data import DatasetError, detect_kind

    try:
        kind = detect_kind(folder)
    except DatasetError:
        kind = None
    if kind is not None:
        return from_dataset(folder, kind, split=split), True
    if split is not None:
        raise DemoError(f"{folder}: --split {split} needs a labelled dataset; this folder holds plain images")
    return from_files(files, source="folder", name=f"folder {folder}"), False


def extract_archive(archive: Path, cache: Path = DATASET_CACHE) -> Path:
    """A dataset shipped as a ``.tar`` (``shared/datasets/*.tar``): extracted once into the cache (never into the
    repository) and the folder it holds returned. Members that would land outside the cache are refused."""
    import tarfile
    import tempfile

    name = archive.name.removesuffix(".tar")
    target = cache / name
    if target.is_dir():
        return target
    if not archive.is_file():
        raise DemoError(f"{archive}: no such archive")
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("extracting %s to %s", archive, target)
    try:
        with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
            inner = Path(tmp) / name
            os.replace(inner if inner.is_dir() else Path(tmp), target)
    except (tarfile.TarError, OSError) as error:
        raise DemoError(f"{archive}: cannot extract ({error})") from error
    return target


def prepare_collection(
    source: Path,
    directory: Path,
    checkpoint: Path,
    *,
    rebuild: bool = False,
    device: str = "auto",
    console: Console | None = None,
    progress: bool = True,
    split: str | None = None,
    runtime: str | None = None,
) -> DemoCollection:
    """Reuse, resume or (re)build the collection of ``source`` in ``directory`` with ``checkpoint``. ``runtime``
    (default: MSIR_RUNTIME, else auto): the build makes and verifies the ONNX export the server then reuses."""
    runtime = runtime or os.environ.get("MSIR_RUNTIME", "auto")
    from indexer import Collection, CollectionError
    from indexer.manifest import Manifest
    from models import CheckpointError, read_checkpoint_meta

    console = console or Console(stderr=True)
    started = time.perf_counter()
    checkpoint = check_checkpoint(checkpoint)
    try:
        meta = read_checkpoint_meta(checkpoint)
    except CheckpointError as error:
        raise DemoError(f"the demo checkpoint cannot be used: {error}") from error
    source = source.resolve()
    if not source.is_dir():
        raise DemoError(f"{source}: not a folder (give --data a folder of images or of class folders)")
    files = image_files(source)
    if not files:
        raise DemoError(
            f"{source}: no image files found (extensions .jpg .jpeg .png .webp .bmp .tif .tiff .gif, "
            "hidden files ignored)"
        )
    wanted = {
        "source": str(source),
        "images_fingerprint": fingerprint(source, files),
        "image_files": len(files),
        "checkpoint_sha256": meta.weights_sha256,
        "split": split,
    }
    state = _read_state(directory)
    same = Manifest.exists(directory) and all(state.get(k) == v for k, v in wanted.items())
    if same and not rebuild and state.get("complete"):
        try:
            with Collection.open(directory, checkpoint, device="cpu") as col:
                count = col.ntotal
        except (CollectionError, CheckpointError, OSError) as error:
            logger.warning("%s cannot be reused (%s); rebuilding it", directory, error)
            same = False
        else:
            return DemoCollection(
                directory, source, count, bool(state.get("labelled")), "reused", time.perf_counter() - started
            )
    resume = same and not rebuild  # same inputs, build not finished: continue it (stored images are skipped)
    if not resume and directory.exists():
        if any(directory.iterdir()) and not (state or Manifest.exists(directory)):
            raise DemoError(f"{directory} exists and is not a demo collection; choose another --var-dir")
        logger.info("removing the out-of-date demo collection %s", directory)
        shutil.rmtree(directory)
    try:
        index_source, labelled = _source(source, files, split)
    except CollectionError as error:
        raise DemoError(str(error)) from error
    directory.mkdir(parents=True, exist_ok=True)
    _write_state(directory, {**wanted, "labelled": labelled, "complete": False})
    console.print(
        f"{'continuing' if resume else 'building'} the demo collection: {len(files)} images from "
        f"{_show(source)} ({'class folders' if labelled else 'unlabelled folder'}), model "
        f"{meta.model_name} -> {_show(directory)}",
        highlight=False,
    )
    try:
        col = (
            Collection.open(directory, checkpoint, device=device, runtime=runtime)
            if resume
            else Collection.create(directory, checkpoint, device=device, runtime=runtime)
        )
        with col:
            workers = 0 if len(files) <= IN_PROCESS_MAX else max(1, (os.cpu_count() or 2) - 1)
            report = col.add_source(index_source, batch_size=256, workers=workers, progress=progress)
            count = col.ntotal
    except (CollectionError, CheckpointError) as error:
        raise DemoError(f"building the demo collection in {_show(directory)} failed: {error}") from error
    _summary(console, report, count)
    if count == 0:
        raise DemoError(f"no image of {source} could be indexed; the report above lists why")
    _write_state(directory, {**wanted, "labelled": labelled, "complete": True, "indexed": count})
    return DemoCollection(
        directory, source, count, labelled, "resumed" if resume else "built", time.perf_counter() - started
    )


def _summary(console: Console, report: Any, count: int) -> None:
    table = Table(title="demo collection", show_header=False, title_justify="left")
    table.add_row("indexed now", str(len(report.added)))
    table.add_row("already stored", str(len(report.already_present)))
    table.add_row("duplicates (same content)", str(len(report.duplicates)))
    table.add_row("unreadable (skipped)", str(len(report.failed) + len(report.listing_skipped)))
    table.add_row("vectors in the index", str(count))
    table.add_row("throughput", f"{report.images_per_s:,.0f} images/s")
    console.print(table)
    for uri, reason in (report.failed + report.listing_skipped)[:10]:
        console.print(f"  skipped {uri}: {reason}", highlight=False)
    if report.report_path:
        console.print(f"  full report: {_show(report.report_path)}", highlight=False)


# -- the folder's own model -------------------------------------------------------------------------------------
def train_for_folder(
    source: Path, checkpoint: Path, var_dir: Path, args: argparse.Namespace, console: Console
) -> OwnModel | None:
    """The folder's own model when it needs one (app.own_model decides): reused when a finished run has the same
    key, else trained (resumed when interrupted) after an estimate; its held-out accuracy and mAP@all printed."""
    from app import own_model as om
    from models import read_checkpoint_meta

    mode = args.train
    if mode == "auto" and args.checkpoint.resolve() != DEMO_CHECKPOINT.resolve():
        mode = "0"  # a checkpoint the user chose is used as it is (TRAIN=1 still trains)
    decision = om.decide(source, read_checkpoint_meta(checkpoint).class_names, mode)
    if decision.labels is None:
        return None
    if not decision.train:
        console.print(f"model: {_show(checkpoint)} ({decision.reason})", highlight=False)
        return None
    labels = decision.labels
    overrides = list(args.train_set)
    budget = f"epochs={args.train_epochs}" if args.train_epochs else f"minutes={args.train_minutes:g}"
    key = om.run_key(fingerprint(source, image_files(source)), labels.classes, om.RECIPE, [*overrides, budget])
    run_dir = om.run_dir_for(var_dir, source, key)
    metrics = om.finished(run_dir)
    if metrics is not None and mode != "1":
        model = om.own_model(run_dir, metrics, "reused")
        console.print(f"model: reusing {_show(run_dir)} (trained on this folder with the same recipe)", highlight=False)
        _print_model(console, model)
        return model
    if metrics is not None:  # TRAIN=1 on a finished run: start afresh
        shutil.rmtree(run_dir)
    epochs = om.resumed_epochs(run_dir) or args.train_epochs
    size = om.recipe_image_size(om.RECIPE, overrides)
    if not any(o.startswith("data.image_size=") for o in overrides):
        fitted = om.fitted_image_size(image_files(source), size)
        if fitted is not None:
            overrides.append(f"data.image_size={fitted}")
            console.print(f"the folder's images are small: training at {fitted} px, not {size}", highlight=False)
            size = fitted
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if not epochs:
        epochs = om.epochs_for_budget(labels.train_images, size, args.train_minutes, load, cpus)
    estimate = om.estimate_seconds(labels.train_images, epochs, size, load, cpus)
    console.print(
        f"training a model for {_show(source)}: {decision.reason} ({', '.join(labels.classes[:8])}"
        f"{', ...' if len(labels.classes) > 8 else ''}). Recipe {_show(om.RECIPE)}, {labels.train_images} training "
        f"images at {size} px, {epochs} epochs: about {estimate / 60:.0f} min on one thread at this load "
        f"({load:.1f}) -> {_show(run_dir)}. Ctrl-C stops it; the next run continues it. TRAIN=0 skips training.",
        highlight=False,
    )
    om.run_training(om.train_command(source, run_dir, epochs, overrides))
    metrics = om.finished(run_dir)
    if metrics is None:
        raise DemoError(f"msir-train ended without a finished model in {_show(run_dir)}")
    model = om.own_model(run_dir, metrics, "trained")
    _print_model(console, model)
    return model


def _print_model(console: Console, model: OwnModel) -> None:
    def shown(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    console.print(
        f"model {_show(model.checkpoint)}: held-out accuracy {shown(model.accuracy)}, mAP@all "
        f"{shown(model.map_at_all)} ({model.epochs} epochs, {model.train_seconds / 60:.1f} min of training)",
        highlight=False,
    )


# -- serve -----------------------------------------------------------------------------------------------------
def check_port(host: str, port: int) -> None:
    """:class:`DemoError` naming the port and ``--port`` when it cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Same option as uvicorn: a port left in TIME_WAIT by a previous demo is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise DemoError(
                    f"port {port} on {host} is already in use (another demo or server?); stop it or choose "
                    f"another port with --port, e.g. `python -m app.quickstart --port {port + 1}`"
                ) from error
            raise DemoError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error


def _public_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{shown}:{port}"


def _example_image(source: Path) -> str:
    files = image_files(source)
    if not files:
        return "IMAGE.jpg"
    return _show(files[0])


def _show(path: Path) -> str:
    """A path relative to the working directory when it is below it (shorter to read and paste)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def banner(collection: DemoCollection, url: str, key: str, key_file: Path) -> list[str]:
    """What is printed once the server answers /readyz (plain lines: the commands must stay copy-pastable)."""
    image = escape(_example_image(collection.source))
    return [
        f"[bold green]msir demo ready[/]: {collection.images} images, web UI at {url}",
        f"API docs: {url}/docs",
        "Search for similar images:",
        f"  curl -F image=@{image} {url}/v1/search",
        "Add your own image, with a label (write endpoints need the demo API key):",
        f'  curl -H "X-API-Key: {key}" -F images=@my-cat.jpg -F labels=cat {url}/v1/images',
        f"API key: {key}  (random, made for this demo folder; saved in {escape(_show(key_file))})",
        "Stop with Ctrl-C.",
    ]


def _announce_when_ready(console: Console, url: str, lines: list[str], stop: threading.Event) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                console.rule("msir")
                for line in lines:
                    console.print(line, soft_wrap=True, highlight=False)
                console.rule()
                return
        except httpx.HTTPError:
            pass
        stop.wait(0.25)


def serve(collection: DemoCollection, checkpoint: Path, host: str, port: int, device: str, key: str) -> None:
    """Run ``msir-serve`` (the app's own settings and uvicorn runner) in this process until Ctrl-C."""
    from app import cli
    from indexer.metadata.tables import default_url

    check_port(host, port)
    # Settings read the environment; the key goes there rather than on a command line that `ps` shows.
    os.environ["MSIR_API_KEY"] = key
    args = [
        "--collection-dir",
        str(collection.directory),
        "--checkpoint",
        str(checkpoint),
        # Explicit: a DATABASE_URL in the environment or .env (say, for docker compose) must not apply here.
        "--database-url",
        default_url(collection.directory),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--device",
        device,
    ]
    url = _public_url(host, port)
    console = Console()
    stop = threading.Event()
    lines = banner(collection, url, key, collection.directory.parent / KEY_FILE)
    watcher = threading.Thread(target=_announce_when_ready, args=(console, url, lines, stop), daemon=True)
    watcher.start()
    try:
        cli.main(args)
    finally:
        stop.set()
    console.print("msir demo stopped.")


# -- command line ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.quickstart",
        description="Build the demo collection (or one of --data DIR) and serve it with the web UI.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="index this folder instead: a labelled dataset (class folders, ISIC 2018, ChestX-ray14, a CSV "
        "manifest), plain images, or a dataset .tar (extracted once to ~/.cache/msir/datasets)",
    )
    parser.add_argument("--split", help="index only this split of a labelled dataset (e.g. train)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the collection even if it is current")
    parser.add_argument(
        "--var-dir", type=Path, default=DEFAULT_VAR_DIR, help="where collections and the key go (var/demo)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="checkpoint (default: the shipped one)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="model device")
    parser.add_argument("--build-only", action="store_true", help="build or reuse the collection, do not serve")
    parser.add_argument(
        "--train",
        choices=["auto", "0", "1"],
        default="auto",
        help="a labelled --data folder whose classes the checkpoint does not know: auto trains the own-photos "
        "recipe on it (make demo TRAIN=...), 0 never trains, 1 trains even when the classes match and retrains a "
        "finished model",
    )
    parser.add_argument(
        "--train-minutes", type=float, default=15.0, help="training budget: picks the epochs (default 15)"
    )
    parser.add_argument("--train-epochs", type=int, help="train exactly this many epochs (overrides the budget)")
    parser.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="msir-train override for the recipe (repeatable), e.g. data.image_size=96",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: expected 1..65535")
    return args


def _setup_logging(console: Console) -> None:
    debug = debug_requested()  # MSIR_LOG_LEVEL=debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    quiet_library_loggers(debug, extra=("httpx",))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    err = Console(stderr=True)
    _setup_logging(err)
    source = args.data if args.data is not None else DEMO_IMAGES
    var_dir = args.var_dir.resolve()
    try:
        if source.suffix == ".tar":
            source = extract_archive(source)
        directory = collection_dir_for(source if args.data is not None else None, var_dir, args.split)
        checkpoint = check_checkpoint(args.checkpoint)
        if args.data is None and not DEMO_IMAGES.is_dir():
            raise DemoError(f"{_show(DEMO_IMAGES)} is missing: the demo images ship with the repository")
        if not args.build_only:
            check_port(args.host, args.port)  # fail before a long build, not after it
        if args.data is not None and source.is_dir():
            trained = train_for_folder(source, checkpoint, var_dir, args, err)
            checkpoint = trained.checkpoint if trained is not None else checkpoint
        collection = prepare_collection(
            source, directory, checkpoint, rebuild=args.rebuild, device=args.device, split=args.split
        )
        err.print(
            f"collection {_show(collection.directory)}: {collection.action} in {collection.seconds:.1f} s "
            f"({collection.images} images)",
            highlight=False,
        )
        key = api_key(var_dir)
        if args.build_only:
            return 0
        serve(collection, checkpoint, args.host, args.port, args.device, key)
    except (DemoError, OwnModelError) as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; run the demo again to continue where it stopped.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
