"""What a build or an add reads: dataset readers (``msir_data``), plain folders, file lists, uploads.

Everything becomes a list of :class:`WorkItem` (picklable: worker processes decode them) plus the skips found
while listing, so the pipeline does not care where images come from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.errors import CollectionError
from indexer.records import NewImage
from msir_data import DatasetError, DatasetReader, Item, open_dataset
from msir_data.base import IMAGE_EXTENSIONS, is_hidden

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkItem:
    """One image to index. ``uri`` is its stable key (resume skips uris already stored)."""

    uri: str
    path: str | None
    labels: tuple[str, ...] = ()
    split: str | None = None
    source: str = "upload"
    metadata: dict[str, Any] = field(default_factory=dict)
    item: Item | None = None  # decoded through the dataset reader when set
    read_path: str | None = None  # where the bytes are now, when not yet at ``path`` (an upload written aside)


@dataclass
class Source:
    """Items to index, the reader that decodes dataset items (None for plain files), and listing-time skips."""

    name: str
    items: list[WorkItem]
    reader: DatasetReader | None = None
    reader_args: tuple[str, str] | None = None  # (kind, root): lets spawned workers reopen the reader
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    note: str | None = None  # how labels were found, for the build summary


def from_dataset(
    root: str | Path,
    kind: str = "auto",
    split: str | None = None,
    *,
    max_pixels: int | None = None,
    limit: int | None = None,
) -> Source:
    """A dataset in any format ``msir_data`` reads (``kind="auto"`` detects it)."""
    try:
        reader = open_dataset(kind, root, max_pixels=max_pixels)
        listed = reader.items(split)
    except (DatasetError, ValueError, OSError) as error:
        raise CollectionError(f"cannot read dataset {root} (kind {kind}): {error}") from error
    names = reader.class_names
    items: list[WorkItem] = []
    for item in listed:
        items.append(
            WorkItem(
                uri=item.source,
                path=str(Path(item.path).resolve()) if item.path is not None else None,
                labels=tuple(names[i] for i in item.labels),
                split=item.split,
                source=reader.name,
                metadata={"item_id": item.item_id},
                item=item,
            )
        )
        if limit is not None and len(items) >= limit:
            break
    skipped = [(e.source, f"{e.reason}: {e.detail}" if e.detail else e.reason) for e in reader.skipped]
    return Source(reader.name, items, reader, (kind, str(root)), skipped)


def from_folder(folder: str | Path, *, split: str | None = None, limit: int | None = None) -> Source:
    """Every image file below ``folder`` (recursively, hidden entries ignored).

    A class-per-folder tree (every image exactly one folder below ``folder``: ``root/<class>/*.jpg``) is labelled
    with the folder names; anything else (images at the top, or at several depths) is stored unlabelled, and
    :attr:`Source.note` says which it was."""
    root = Path(folder)
    if not root.is_dir():
        raise CollectionError(f"{root}: not a folder")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(is_hidden(Path(part)) for part in p.relative_to(root).parts)
        and p.is_file()
    )
    if limit is not None:
        files = files[:limit]
    source = from_files(files, split=split, source="folder", name=f"folder {root}")
    classes = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) == 2}
    if files and all(len(p.relative_to(root).parts) == 2 for p in files):
        by_path = {str(p.resolve()): p.relative_to(root).parts[0] for p in files}
        source.items = [
            WorkItem(uri=i.uri, path=i.path, labels=(by_path[i.uri],), split=i.split, source=i.source)
            for i in source.items
        ]
        source.note = f"labels from the folder names: {len(classes)} class(es) ({', '.join(sorted(classes)[:10])})"
    else:
        source.note = "not a class-per-folder tree (images not all one folder below the root): stored unlabelled"
    return source


def from_files(
    paths: Iterable[str | Path], *, split: str | None = None, source: str = "files", name: str = "files"
) -> Source:
    items: list[WorkItem] = []
    skipped: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw).resolve()
        if not path.is_file():
            skipped.append((str(raw), "file not found"))
            continue
        items.append(WorkItem(uri=str(path), path=str(path), split=split, source=source))
    return Source(name, items, skipped=skipped)


def from_new_images(images: Iterable[NewImage]) -> Source:
    items: list[WorkItem] = []
    for image in images:
        path = Path(image.path).resolve()
        items.append(
            WorkItem(
                uri=str(path),
                path=str(path),
                labels=tuple(image.labels),
                split=image.split,
                source=image.source,
                metadata=dict(image.metadata),
            )
        )
    return Source("images", items)


def take_shard(source: Source, index: int, count: int) -> Source:
    """Shard ``index`` of ``count`` (0-based) of ``source``: every ``count``-th item of its listing from
    ``index``. Listings are deterministic (sorted folders, the readers' fixed order), so N processes on any hosts
    get disjoint shards covering the source; the skips found while listing are shared out the same way so that
    the shards' reports add up to the whole."""
    if not 0 <= index < count:
        raise CollectionError(f"shard {index}/{count}: expected 0 <= I < N")
    return Source(
        f"{source.name} (shard {index}/{count})",
        source.items[index::count],
        source.reader,
        source.reader_args,
        source.skipped[index::count],
    )
