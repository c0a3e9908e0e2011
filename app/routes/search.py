"""POST /v1/search: similar images to an uploaded one, with the classifier's and the neighbours' predictions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from app.deps import ServiceDep, require_read_key, resolve_k
from app.routes import errors
from app.schemas import SearchResponse, Timings
from app.service import StageTimer, neighbour

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_read_key)])


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Find the images most similar to an uploaded image",
    responses=errors(401, 403, 413, 415, 422, 503),
)
async def search(
    service: ServiceDep,
    image: Annotated[UploadFile, File(description="The query image (any format Pillow decodes).")],
    k: Annotated[int | None, Form(description="Neighbours to return (1..MSIR_MAX_K; default MSIR_DEFAULT_K).")] = None,
    label: Annotated[
        list[str] | None,
        Form(description="Only neighbours carrying one of these labels (repeat the field for several)."),
    ] = None,
    split: Annotated[str | None, Form(description="Only neighbours from this split (train, test...).")] = None,
    exclude_duplicates: Annotated[
        bool, Form(description="Leave out stored images with exactly the same content (sha256) as the query.")
    ] = False,
) -> SearchResponse:
    k = resolve_k(k, service.settings)
    labels = service.check_labels(label)
    timer = StageTimer()
    with service.model.track():
        prepared = await service.prepare(image, "image", timer)
        embedding, logits = await service.embed(prepared, timer)
    hits = await service.search(
        embedding,
        k,
        timer,
        labels=labels,
        split=split or None,
        exclude_sha256={prepared.sha256} if exclude_duplicates else None,
    )
    service.observe(timer)
    return SearchResponse(
        k=k,
        neighbours=[neighbour(h) for h in hits],
        predictions=service.predictions(logits),
        multi_label=service.multi_label,
        knn_prediction=service.knn(hits),
        timings=Timings(**timer.as_dict()),
    )
