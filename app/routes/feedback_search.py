"""POST /v1/search/feedback: search from several positive and negative examples (stored ids and/or uploads), by
Rocchio's formula (:mod:`msir_core.retrieval.feedback`)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, UploadFile

from app.deps import ServiceDep, require_read_key, resolve_k
from app.errors import ApiError
from app.filters import check_split
from app.routes import errors
from app.routes.images import MAX_ID
from app.service import Service, StageTimer
from msir_core.retrieval.feedback import NEGATIVE_WEIGHT, FeedbackError, rocchio
from msir_schemas.api import SearchResponse

# Examples per request (ids and uploads together): each upload is one forward pass.
MAX_EXAMPLES = 32

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_read_key)])


def _refuse(field: str, message: str, code: str = "validation_error") -> ApiError:
    return ApiError(422, code, f"form field '{field}': {message}", details=[{"field": field, "message": message}])


async def _stored(service: Service, ids: list[int], field: str) -> np.ndarray:
    found = await service.blocking(service.collection.store.vectors, ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise _refuse(field, f"no image with id(s) {missing} in the collection", "unknown_image")
    return np.stack([found[i] for i in ids]) if ids else np.zeros((0, 0), np.float32)


async def _uploaded(service: Service, uploads: list[UploadFile], field: str, timer: StageTimer) -> list[np.ndarray]:
    out = []
    for i, upload in enumerate(uploads):
        result = await service.query(upload, f"{field}[{i}]", timer, None)
        out.append(result.embedding)
    return out


@router.post(
    "/search/feedback",
    response_model=SearchResponse,
    summary="Search from positive and negative examples (relevance feedback: Rocchio, mean(P) - w mean(N))",
    responses=errors(400, 401, 403, 413, 415, 422, 503),
)
async def search_feedback(
    service: ServiceDep,
    positive_id: Annotated[
        list[Annotated[int, Form(ge=0, le=MAX_ID)]] | None,
        Form(description="Stored images like the wanted ones (repeat the field)."),
    ] = None,
    negative_id: Annotated[
        list[Annotated[int, Form(ge=0, le=MAX_ID)]] | None,
        Form(description="Stored images unlike the wanted ones (repeat the field)."),
    ] = None,
    positive: Annotated[
        list[UploadFile] | None, File(description="Uploaded images like the wanted ones (repeat the field).")
    ] = None,
    negative: Annotated[
        list[UploadFile] | None, File(description="Uploaded images unlike the wanted ones (repeat the field).")
    ] = None,
    negative_weight: Annotated[
        float, Form(ge=0, le=1, description="Weight w of the negative examples' mean (Rocchio's gamma).")
    ] = NEGATIVE_WEIGHT,
    k: Annotated[int | None, Form(description="Results to return (1..MSIR_MAX_K; default MSIR_DEFAULT_K).")] = None,
    label: Annotated[list[str] | None, Form(description="Only images carrying one of these labels.")] = None,
    split: Annotated[str | None, Form(description="Only images from this split.")] = None,
) -> SearchResponse:
    pos_ids, neg_ids = list(dict.fromkeys(positive_id or [])), list(dict.fromkeys(negative_id or []))
    pos_files, neg_files = positive or [], negative or []
    if not pos_ids and not pos_files:
        raise _refuse("positive_id", "at least one positive example is needed (positive_id or positive)")
    count = len(pos_ids) + len(neg_ids) + len(pos_files) + len(neg_files)
    if count > MAX_EXAMPLES:
        raise _refuse("positive_id", f"{count} examples; at most {MAX_EXAMPLES} per request")
    both = sorted(set(pos_ids) & set(neg_ids))
    if both:
        raise _refuse("negative_id", f"id(s) {both} are given as positive and negative examples")
    wanted = resolve_k(k, service.settings)
    labels = await service.check_labels(label)
    timer = StageTimer()
    positives = [
        *(await _stored(service, pos_ids, "positive_id")),
        *await _uploaded(service, pos_files, "positive", timer),
    ]
    negatives = [
        *(await _stored(service, neg_ids, "negative_id")),
        *await _uploaded(service, neg_files, "negative", timer),
    ]
    try:
        query = rocchio(np.stack(positives), np.stack(negatives) if negatives else None, negative_weight)
    except FeedbackError as exc:
        raise _refuse("negative_id", str(exc)) from exc
    hits = await service.search(
        query,
        wanted,
        timer,
        labels=labels,
        split=await check_split(service, split),
        exclude_ids=set(pos_ids) | set(neg_ids),  # the examples themselves are known already
    )
    return service.answer_without_image(wanted, hits, timer)
