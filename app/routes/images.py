"""Stored images: the file, its thumbnail and its neighbours (reads)."""

from __future__ import annotations

import logging
import mimetypes
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from PIL import Image

from app.deps import ServiceDep, require_read_key, require_write_key, resolve_k
from app.errors import ApiError
from app.filters import check_split
from app.metadata_limits import MetadataError
from app.metadata_limits import check as check_metadata
from app.pagination import CURSOR_MAX_LENGTH, CURSOR_PATTERN, MAX_ID, CursorError, decode_cursor, encode_cursor
from app.routes import errors
from app.service import Service, StageTimer
from app.shaping import above, image_info
from app.upload_forms import add_uploads, metadata_limits
from indexer import ImageRecord, row_paths
from models import ImageDecodeError
from msir_schemas.api import AddImagesResponse, ImageEdit, ImageInfo, ImagePage, SearchResponse

logger = logging.getLogger(__name__)

# Reads may need the key (MSIR_READ_REQUIRES_KEY); writes always do (their own dependency).
router = APIRouter(prefix="/v1/images", tags=["images"])
read = [Depends(require_read_key)]

ImageId = Annotated[int, PathParam(ge=0, le=MAX_ID, description="Image id (as returned by search).")]
MAX_PAGE = 500  # images per page of GET /v1/images
UNBOUNDED_FORM_FIELD = 2**62


def file_headers(service: Service, etag: str) -> dict[str, str]:
    # Ids are never reused, so a file under an id never changes; shared caches only when reads are public.
    scope = "private" if service.settings.read_requires_key else "public"
    return {"Cache-Control": f"{scope}, max-age=3600", "X-Content-Type-Options": "nosniff", "ETag": f'"{etag}"'}


async def fetch_record(service: Service, image_id: int) -> ImageRecord:
    record = await service.blocking(service.collection.get, image_id)
    if record is None:
        raise ApiError(404, "image_not_found", f"no image with id {image_id} in the collection")
    return record


def stored_file(service: Service, record: ImageRecord) -> Path:
    """The image's file as recorded in the database row; never a path from the request."""
    if record.path is None:
        # No server path or source location in the message: clients only ever see ids and URLs.
        raise ApiError(404, "file_not_stored", f"image {record.id} has no file of its own to serve")
    path = row_paths.resolve(Path(service.settings.collection_dir), record.path)
    if not path.is_file():
        logger.warning("file of image %d is missing: %s", record.id, path)
        raise ApiError(404, "file_missing", f"the file of image {record.id} is missing on the server")
    return path


def media_type_of(path: Path) -> str:
    """Content type from the file's own header (Pillow), falling back to its suffix."""
    try:
        with Image.open(path) as img:
            mime = Image.MIME.get(img.format or "")
    except (OSError, ValueError):
        mime = None
    return mime or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


@router.get(
    "",
    response_model=ImagePage,
    summary="The collection's images, page by page in id order, filtered by label and split",
    dependencies=read,
    responses=errors(401, 403, 422, 429, 503),
)
async def list_images(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Images per page (1..{MAX_PAGE}).")] = 50,
    cursor: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=CURSOR_MAX_LENGTH,
            pattern=CURSOR_PATTERN,
            description="The previous page's next_cursor (opaque); absent for the first page.",
        ),
    ] = None,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_ID,
            deprecated=True,
            description="Deprecated, use cursor: only ids above this one (the previous page's next_after).",
        ),
    ] = None,
    label: Annotated[list[str] | None, Query(description="Only images carrying one of these labels.")] = None,
    split: Annotated[str | None, Query(max_length=64, description="Only images of this split.")] = None,
) -> ImagePage:
    if cursor is not None:
        if after is not None:
            raise ApiError(
                422,
                "cursor_and_after",
                "cursor: give either cursor or the deprecated after, not both",
                details=[{"field": "cursor", "message": "not with after"}],
            )
        try:
            after = decode_cursor(cursor)
        except CursorError as exc:
            raise ApiError(
                422,
                "invalid_cursor",
                f"cursor: {exc}; pass the next_cursor of the previous page unchanged",
                details=[{"field": "cursor", "message": str(exc)}],
            ) from exc
    labels = await service.check_labels(label)
    records, total = await service.blocking(
        service.collection.list_images, after=after, limit=limit, labels=labels, split=await check_split(service, split)
    )
    last = records[-1].id if len(records) == limit else None
    return ImagePage(
        images=[image_info(r) for r in records],
        total=total,
        limit=limit,
        next_cursor=None if last is None else encode_cursor(last),
        next_after=last,
    )


@router.get(
    "/{image_id}",
    response_class=FileResponse,
    summary="The stored image file, with its content type",
    dependencies=read,
    responses={200: {"content": {"image/*": {}}}, **errors(401, 403, 404, 422, 429, 503)},
)
async def get_image(service: ServiceDep, image_id: ImageId) -> FileResponse:
    record = await fetch_record(service, image_id)
    path = await service.blocking(stored_file, service, record)
    media_type = await service.blocking(media_type_of, path)
    return FileResponse(path, media_type=media_type, headers=file_headers(service, record.sha256))


@router.get(
    "/{image_id}/info",
    response_model=ImageInfo,
    summary="Metadata of a stored image",
    dependencies=read,
    responses=errors(401, 403, 404, 422, 429, 503),
)
async def get_image_info(service: ServiceDep, image_id: ImageId) -> ImageInfo:
    return image_info(await fetch_record(service, image_id))


@router.get(
    "/{image_id}/thumbnail",
    response_class=FileResponse,
    summary="A JPEG (or PNG, when transparent) thumbnail, cached on disk by content hash",
    dependencies=read,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **errors(401, 403, 404, 422, 429, 503)},
)
async def get_thumbnail(service: ServiceDep, image_id: ImageId) -> FileResponse:
    record = await fetch_record(service, image_id)
    hit = await service.blocking(service.thumbnails.cached, record.sha256)
    if hit is None:
        path = await service.blocking(stored_file, service, record)
        try:
            hit = await service.blocking(service.thumbnails.get, record.sha256, path)
        except ImageDecodeError as exc:
            logger.warning("cannot render thumbnail of image %d: %s", image_id, exc)
            raise ApiError(404, "file_unreadable", f"the file of image {image_id} cannot be decoded") from exc
    thumb, media_type = hit
    return FileResponse(thumb, media_type=media_type, headers=file_headers(service, thumb.stem))


@router.get(
    "/{image_id}/neighbours",
    response_model=SearchResponse,
    summary="The images most similar to a stored image (itself excluded)",
    dependencies=read,
    responses=errors(401, 403, 404, 422, 429, 503),
)
async def get_neighbours(
    service: ServiceDep,
    image_id: ImageId,
    k: Annotated[int | None, Query(description="Neighbours to return (1..MSIR_MAX_K).")] = None,
    label: Annotated[list[str] | None, Query(description="Only neighbours carrying one of these labels.")] = None,
    split: Annotated[str | None, Query(description="Only neighbours from this split.")] = None,
    min_score: Annotated[
        float | None, Query(ge=-1.0, le=1.0, description="Drop results scoring below this (-1..1, the cosine's range).")
    ] = None,
) -> SearchResponse:
    k = resolve_k(k, service.settings)
    labels = await service.check_labels(label)
    timer = StageTimer()
    record = await fetch_record(service, image_id)
    vector = await service.blocking(service.collection.vector, image_id)
    timer.add("database", time.perf_counter() - timer.started)
    if vector is None:
        raise ApiError(404, "image_not_found", f"image {image_id} has no stored embedding")
    hits = await service.search(
        vector, k, timer, labels=labels, split=await check_split(service, split), exclude_ids={image_id}
    )
    return service.answer_without_image(k, above(hits, min_score), timer, query=image_info(record))


@router.post(
    "",
    response_model=AddImagesResponse,
    status_code=201,
    summary="Add images to the collection (API key)",
    dependencies=[Depends(require_write_key)],
    # The whole body is already bounded by MSIR_MAX_UPLOAD_BYTES: lift Starlette's own 1 MB cap on a text field,
    # so that oversized metadata reaches parse_metadata and is refused with a 422 naming MSIR_MAX_METADATA_BYTES.
    form_limits={"max_part_size": UNBOUNDED_FORM_FIELD},
    responses={
        200: {"model": AddImagesResponse, "description": "Nothing new added: every image was a duplicate."},
        **errors(400, 401, 403, 413, 422, 429, 503),
    },
)
async def add_images(
    service: ServiceDep,
    response: Response,
    images: Annotated[list[UploadFile], File(description="One or more image files (repeat the field).")],
    labels: Annotated[
        list[str] | None,
        Form(description="Per image, in the same order: its class names separated by '|' (empty: none)."),
    ] = None,
    split: Annotated[
        str | None, Form(max_length=64, description="Split recorded for every image (e.g. 'train').")
    ] = None,
    metadata: Annotated[
        str | None,
        Form(description="JSON object stored with every image, or a JSON list with one object per image."),
    ] = None,
) -> AddImagesResponse:
    result = await add_uploads(service, images, labels, split, metadata)
    service.forget_stats()
    if not result.added and not result.duplicates:
        raise ApiError(
            422,
            "no_images_added",
            "none of the uploaded files could be added: "
            + "; ".join(f"{f.filename}: {f.reason}" for f in result.failures),
            details=[f.model_dump() for f in result.failures],
        )
    if not result.added:
        response.status_code = 200
    return result


@router.delete(
    "/{image_id}",
    status_code=204,
    summary="Remove an image from the collection (API key)",
    dependencies=[Depends(require_write_key)],
    responses=errors(401, 403, 404, 422, 429, 503),
)
async def delete_image(service: ServiceDep, image_id: ImageId) -> Response:
    record = await service.blocking(service.collection.get, image_id)
    removed = await service.blocking(service.collection.remove, [image_id])
    service.forget_stats()
    if not removed:
        raise ApiError(404, "image_not_found", f"no image with id {image_id} in the collection")
    if record is not None:
        await service.blocking(service.thumbnails.discard, record.sha256)
    service.metrics.index_size.set(await service.blocking(service.index_size))
    return Response(status_code=204)


@router.patch(
    "/{image_id}",
    response_model=ImageInfo,
    summary="Change an image's labels and/or metadata (API key); the embedding is kept",
    dependencies=[Depends(require_write_key)],
    responses=errors(401, 403, 404, 422, 429, 503),
)
async def edit_image(service: ServiceDep, image_id: ImageId, edit: ImageEdit) -> ImageInfo:
    if edit.is_empty():
        return image_info(await fetch_record(service, image_id))
    if edit.metadata is not None:
        # The same rule as an upload's metadata, so that no database sees a value another one would refuse.
        try:
            check_metadata(edit.metadata, metadata_limits(service), size=True)
        except MetadataError as exc:
            raise ApiError(
                422,
                "validation_error",
                f"body field 'metadata': {exc}",
                details=[{"field": "metadata", "in": "body", "message": str(exc)}],
            ) from exc
    changed = await service.blocking(
        service.collection.edit,
        [image_id],
        labels=edit.labels,
        add_labels=edit.add_labels,
        remove_labels=edit.remove_labels,
        metadata=edit.metadata,
        replace_metadata=edit.replace_metadata,
    )
    if not changed:
        raise ApiError(404, "image_not_found", f"no image with id {image_id} in the collection")
    service.forget_stats()
    return image_info(await fetch_record(service, image_id))
