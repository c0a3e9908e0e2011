"""GET /v1/collection: what is being served (model, classes, index, size)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.deps import ServiceDep, require_read_key
from app.routes import errors
from msir_schemas.api import CollectionInfo

router = APIRouter(prefix="/v1", tags=["collection"], dependencies=[Depends(require_read_key)])


@router.get(
    "/collection",
    response_model=CollectionInfo,
    summary="The served model, its classes and the index",
    responses=errors(401, 403, 429, 503),
)
async def collection_info(service: ServiceDep) -> CollectionInfo:
    return await service.collection_info()
