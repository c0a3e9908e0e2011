"""GET /v1/map: a 2-D map of the collection's embeddings (PCA), coloured by label in the web UI."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.deps import ServiceDep, require_read_key
from app.derived import collection_map
from app.routes import errors
from msir_schemas.api import CollectionMap

router = APIRouter(prefix="/v1", tags=["map"], dependencies=[Depends(require_read_key)])


@router.get(
    "/map",
    response_model=CollectionMap,
    summary="A 2-D map of the collection (PCA of the embeddings; at most MSIR_MAP_MAX_POINTS points, sampled)",
    responses=errors(401, 403, 503),
)
async def get_map(service: ServiceDep) -> CollectionMap:
    return await collection_map(service)
