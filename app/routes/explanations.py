"""Heat-maps of why stored results are similar to a query: POST /v1/explain (an uploaded query) and
GET /v1/images/{id}/explain (a stored one)."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from pydantic import Field

from app.deps import ServiceDep, require_read_key
from app.errors import ApiError
from app.query_images import prepare_image
from app.routes import errors
from app.routes.images import MAX_ID, ImageId, fetch_record, stored_file
from app.service import Service, StageTimer
from models import ImageDecodeError
from models.similarity_maps import ExplainUnsupportedError, PairMaps
from msir_schemas.api import ExplainResponse, Explanation, HeatMap, Timings

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_read_key)])


def heat_map(values: np.ndarray) -> HeatMap:
    rows, cols = values.shape
    return HeatMap(rows=rows, cols=cols, values=[[float(v) for v in row] for row in values])


async def stored_input(service: Service, image_id: int, field_name: str) -> np.ndarray:
    """A stored image as the model's uint8 input (decoded from its file, as a query upload would be)."""
    record = await fetch_record(service, image_id)
    path = await service.blocking(stored_file, service, record)
    data = await service.blocking(path.read_bytes)
    try:
        prepared = await service.blocking(prepare_image, data, service.spec, service.settings.max_pixels, field_name)
    except ImageDecodeError as exc:
        raise ApiError(404, "file_unreadable", f"{field_name}: the file of image {image_id} cannot be decoded") from exc
    return prepared.array


# Results per explanation request: each costs a forward pass (and a file read); MSIR_MAX_K's default.
MAX_RESULTS = 100
ResultIdsHelp = f"Stored images to explain (repeat the field; 1..{MAX_RESULTS} ids)."
ResultId = Annotated[int, Field(ge=0, le=MAX_ID)]


async def explained(service: Service, query: np.ndarray, ids: list[int], timer: StageTimer) -> ExplainResponse:
    """Heat-maps of ``query`` (the model's uint8 input) against each stored result."""
    ids = list(dict.fromkeys(ids))
    started = time.perf_counter()
    results = np.stack([await stored_input(service, i, f"result_id={i}") for i in ids])
    timer.add("decode", time.perf_counter() - started)
    started = time.perf_counter()
    try:
        maps: list[PairMaps] = await service.blocking(service.explainer.explain, query, results)
    except ExplainUnsupportedError as exc:
        raise ApiError(501, "explain_unsupported", str(exc)) from exc
    timer.add("embed", time.perf_counter() - started)
    service.observe(timer)
    return ExplainResponse(
        method=maps[0].method,
        exact=maps[0].exact,
        explanations=[
            Explanation(result_id=i, score=m.score, query=heat_map(m.query), result=heat_map(m.result))
            for i, m in zip(ids, maps, strict=True)
        ],
        timings=Timings(**timer.as_dict()),
    )


@router.post(
    "/explain",
    response_model=ExplainResponse,
    summary="Heat-maps of why each stored result is similar to an uploaded query image",
    responses=errors(401, 403, 404, 413, 415, 422, 501, 503),
)
async def explain_upload(
    service: ServiceDep,
    image: Annotated[UploadFile, File(description="The query image.")],
    result_id: Annotated[list[ResultId], Form(min_length=1, max_length=MAX_RESULTS, description=ResultIdsHelp)],
) -> ExplainResponse:
    timer = StageTimer()
    query = (await service.prepare(image, "image", timer)).array
    return await explained(service, query, result_id, timer)


@router.get(
    "/images/{image_id}/explain",
    response_model=ExplainResponse,
    summary="Heat-maps of why each stored result is similar to a stored query image",
    responses=errors(401, 403, 404, 422, 501, 503),
)
async def explain_stored(
    service: ServiceDep,
    image_id: ImageId,
    result_id: Annotated[list[ResultId], Query(min_length=1, max_length=MAX_RESULTS, description=ResultIdsHelp)],
) -> ExplainResponse:
    timer = StageTimer()
    started = time.perf_counter()
    query = await stored_input(service, image_id, "image_id")
    timer.add("decode", time.perf_counter() - started)
    return await explained(service, query, result_id, timer)
