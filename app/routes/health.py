"""Liveness, readiness and Prometheus metrics (never behind the API key: probes and scrapers call them)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from indexer import CollectionError
from msir_schemas.api import ErrorResponse, Health, Readiness

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Model, index and database usable right now",
    responses={503: {"model": ErrorResponse, "description": "Not ready (Retry-After set)."}},
)
async def readyz(request: Request) -> Response:
    service = getattr(request.app.state, "service", None)
    retry = str(request.app.state.settings.retry_after_s)
    if service is None:
        return _not_ready("not_ready", "the model and collection are still loading", {"model": "loading"}, retry)
    if not service.warmed_up:
        return _not_ready("not_ready", "the model is warming up", {"model": "warming up"}, retry)
    col = service.collection
    checks = {
        "model": "ok",
        "index": f"ok ({service.index_size()} vectors, {col.index_type}, generation {col.generation})",
    }
    try:
        await service.blocking(col.ping)
        head = await service.blocking(col.store.head)
    except CollectionError as exc:  # DatabaseUnavailable and anything else the ping refuses
        logger.warning("readiness check failed: %s", exc)
        checks["database"] = "unavailable (details in the server log)"
        return _not_ready("database_unavailable", "the metadata database is unreachable", checks, retry)
    checks["database"] = "ok"
    sync = service.sync_state(head)
    checks["sync"] = f"seq {sync.seq} of {sync.head} (lag {sync.lag})"
    return JSONResponse(Readiness(status="ready", checks=checks, sync=sync).model_dump())


def _not_ready(code: str, message: str, checks: dict[str, str], retry: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": checks}},
        status_code=503,
        headers={"Retry-After": retry},
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    metrics_ = request.app.state.metrics
    service = getattr(request.app.state, "service", None)
    if service is not None:  # another process (msir-index add) may have grown the collection
        metrics_.index_size.set(service.index_size())
    registry = metrics_.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
