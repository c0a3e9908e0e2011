"""POST /v1/explain: heat-maps of why stored results are similar to a query (an upload or a stored image)."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, UploadFile

from app.deps import ServiceDep, require_read_key
from app.errors import ApiError
from app.routes import errors
from app.routes.images import MAX_ID, fetch_record, stored_file
from app.service import Service, StageTimer, _prepare
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
        prepared = await service.blocking(_prepare, data, service.spec, service.settings.max_pixels, field_name)
    except ImageDecodeError as exc:
        raise ApiError(404, "file_unreadable", f"{field_name}: the file of image {image_id} cannot be decoded") from exc
    return prepared.array


def _ids(values: list[int], service: Service) -> list[int]:
    limit = service.settings.max_k
    if not 1 <= len(values) <= limit or any(not 0 <= v <= MAX_ID for v in values):
        raise ApiError(
            422,
            "validation_error",
            f"form field 'result_id': {len(values)} ids; expected 1 to {limit} (MSIR_MAX_K) image ids >= 0",
            details=[{"field": "result_id", "message": f"1 to {limit} image ids"}],
        )
    return list(dict.fromkeys(values))


@router.post(
    "/explain",
    response_model=ExplainResponse,
    summary="Heat-maps of why each result is similar to the query (query image or query_id, and result ids)",
    responses=errors(401, 403, 404, 413, 415, 422, 501, 503),
)
async def explain(
    service: ServiceDep,
    result_id: Annotated[list[int], Form(description="Stored images to explain (repeat the field; 1..MSIR_MAX_K).")],
    image: Annotated[UploadFile | None, File(description="The query image; or give query_id.")] = None,
    query_id: Annotated[int | None, Form(ge=0, le=MAX_ID, description="A stored image as the query.")] = None,
) -> ExplainResponse:
    if (image is None) == (query_id is None):
        raise ApiError(
            422,
            "validation_error",
            "give the query as exactly one of form fields 'image' (a file) and 'query_id' (a stored image)",
            details=[{"field": "image", "message": "exactly one of image and query_id"}],
        )
    ids = _ids(result_id, service)
    timer = StageTimer()
    if image is not None:
        query = (await service.prepare(image, "image", timer)).array
    else:
        started = time.perf_counter()
        query = await stored_input(service, int(query_id or 0), "query_id")
        timer.add("decode", time.perf_counter() - started)
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
