"""Adding uploaded images to the collection: form parsing, per-file validation, one batched add.

A bad file never fails the whole request: it is reported under ``failures`` with the reason, and the good ones
are added. Files are stored content-addressed by the collection (``Collection.add_uploads``), so the name a client
sent is only ever echoed back, never used as a path.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import UploadFile
from PIL import Image

from app.errors import ApiError
from app.metadata_limits import MetadataError, MetadataLimits, parse
from app.service import Service
from app.shaping import split_labels
from indexer import Upload, row_paths
from indexer.upload_files import final_path
from models import ImageDecodeError, open_image
from msir_schemas.api import AddedImage, AddImagesResponse, DuplicateImage, FailedImage

logger = logging.getLogger(__name__)

# Longest file name stored with an upload (filesystems allow 255 bytes; a little room for names from elsewhere).
MAX_FILENAME_CHARS = 1024

# Pillow format -> suffix of the stored file.
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass
class _Pending:
    filename: str
    data: bytes
    sha256: str
    suffix: str
    labels: list[str]
    metadata: dict[str, Any]
    uri: str = ""
    copies: list[str] = field(default_factory=list)  # same content uploaded again in this request


def check_image(data: bytes, max_pixels: int, name: str) -> str:
    """Decode fully (the same checks as a search) and return the Pillow format name."""
    open_image(data, max_pixels=max_pixels, name=name)
    with Image.open(io.BytesIO(data)) as probe:  # header only: open_image's copy has lost the format
        return str(probe.format)


def parse_labels(labels: list[str] | None, count: int) -> list[list[str]]:
    """One label list per image. Any label is accepted: the collection's vocabulary is what its images carry."""
    if not labels:
        return [[] for _ in range(count)]
    if len(labels) != count:
        raise ApiError(
            422,
            "validation_error",
            f"form field 'labels': got {len(labels)} values for {count} images; send one per image "
            f"('|' between several labels of one image, an empty value for none)",
            details=[{"field": "labels", "message": f"expected {count} values, got {len(labels)}"}],
        )
    return [split_labels([value]) if value else [] for value in labels]


def parse_metadata(metadata: str | None, count: int, limits: MetadataLimits) -> list[dict[str, Any]]:
    if metadata is None or not metadata.strip():
        return [{} for _ in range(count)]
    try:
        value = parse(metadata, limits)
    except MetadataError as exc:
        raise ApiError(
            422,
            "validation_error",
            f"form field 'metadata': {exc}",
            details=[{"field": "metadata", "in": "body", "message": str(exc)}],
        ) from exc
    if isinstance(value, dict):
        return [dict(value) for _ in range(count)]
    if isinstance(value, list) and len(value) == count and all(isinstance(v, dict) for v in value):
        return [dict(v) for v in value]
    raise ApiError(
        422,
        "validation_error",
        f"form field 'metadata': expected a JSON object (for every image) or a list of {count} objects "
        f"(one per image), got {type(value).__name__}",
    )


def metadata_limits(service: Service) -> MetadataLimits:
    settings = service.settings
    return MetadataLimits(settings.max_metadata_bytes, settings.max_metadata_depth, settings.max_metadata_keys)


async def add_uploads(
    service: Service,
    images: list[UploadFile],
    labels: list[str] | None,
    split: str | None,
    metadata: str | None,
) -> AddImagesResponse:
    per_labels = parse_labels(labels, len(images))
    per_metadata = parse_metadata(metadata, len(images), metadata_limits(service))
    failures: list[FailedImage] = []
    pending: dict[str, _Pending] = {}  # by sha256: the same bytes twice in one request are stored once
    for i, upload in enumerate(images):
        filename = upload.filename or f"images[{i}]"
        if len(filename) > MAX_FILENAME_CHARS:
            # The name is stored with the image and echoed in every answer: bound it like the metadata.
            shown = f"{filename[:40]}..."
            failures.append(
                FailedImage(
                    filename=shown,
                    reason=f"form field 'images': file name of {len(filename):,} characters exceeds the limit of "
                    f"{MAX_FILENAME_CHARS:,} characters",
                )
            )
            continue
        data = await upload.read()
        if not data:
            failures.append(FailedImage(filename=filename, reason="empty file (0 bytes)"))
            continue
        try:
            fmt = await service.blocking(check_image, data, service.settings.max_pixels, filename)
        except ImageDecodeError as exc:
            failures.append(FailedImage(filename=filename, reason=str(exc)))
            continue
        if fmt not in SUFFIXES:
            failures.append(
                FailedImage(
                    filename=filename,
                    reason=f"{filename}: {fmt} images are not stored; accepted formats: {sorted(SUFFIXES)}",
                )
            )
            continue
        sha = hashlib.sha256(data).hexdigest()
        if sha in pending:
            pending[sha].copies.append(filename)
            continue
        pending[sha] = _Pending(filename, data, sha, SUFFIXES[fmt], per_labels[i], per_metadata[i])

    items: list[_Pending] = list(pending.values())
    directory = service.collection.directory
    uploads: list[Upload] = []
    for item in items:
        # The collection reports uploads by their content-addressed path relative to it (their uri).
        item.uri = row_paths.to_stored(directory, final_path(directory, item.sha256, item.suffix))
        uploads.append(
            Upload(
                data=item.data,
                suffix=item.suffix,
                labels=item.labels,
                split=split or None,
                metadata={**item.metadata, "filename": item.filename},
            )
        )
    # Files are written aside and moved in only once their rows are committed: a failed add leaves no file.
    report = await service.blocking(service.collection.add_uploads, uploads) if uploads else None

    added: list[AddedImage] = []
    duplicates: list[DuplicateImage] = []
    if report is not None:
        # The collection reports by uri; ids of new rows come in the order the images were given.
        existing = dict(report.duplicates)
        refused = dict(report.failed)
        new_ids = iter(report.added)
        for item in items:
            if item.uri in refused:
                # Its reason names the stored file: show the client's file name instead of a server path.
                reason = refused[item.uri].replace(item.uri, item.filename)
                failures += [FailedImage(filename=name, reason=reason) for name in [item.filename, *item.copies]]
                continue
            if item.uri in existing:
                image_id = existing[item.uri]
                duplicates.append(DuplicateImage(filename=item.filename, existing_id=image_id))
            else:
                image_id = next(new_ids)
                added.append(AddedImage(filename=item.filename, id=image_id))
            duplicates.extend(DuplicateImage(filename=name, existing_id=image_id) for name in item.copies)
    if added:
        service.metrics.index_size.set(await service.blocking(service.index_size))
    logger.info("upload: %d added, %d duplicates, %d failed", len(added), len(duplicates), len(failures))
    return AddImagesResponse(added=added, duplicates=duplicates, failures=failures)
