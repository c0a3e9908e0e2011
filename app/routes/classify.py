"""POST /v1/classify: the classifier head's prediction for an uploaded image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, UploadFile

from app.deps import ServiceDep, require_read_key
from app.routes import errors
from app.service import StageTimer
from msir_schemas.api import ClassifyResponse, Timings

router = APIRouter(prefix="/v1", tags=["classify"], dependencies=[Depends(require_read_key)])


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Class probabilities of an uploaded image (softmax, or sigmoid per label when multi-label)",
    responses=errors(400, 401, 403, 413, 415, 422, 429, 503),
)
async def classify(
    service: ServiceDep,
    image: Annotated[UploadFile, File(description="The image to classify.")],
) -> ClassifyResponse:
    timer = StageTimer()
    result = await service.query(image, "image", timer, None)
    service.observe(timer)
    return ClassifyResponse(
        predictions=service.predictions(result.logits, top=len(service.class_names)),
        predictions_scope=(await service.predictions_scope())[0],
        multi_label=service.multi_label,
        timings=Timings(**timer.as_dict()),
    )
