"""One JSON error body for every 4xx/5xx: ``{"error": {"code": "...", "message": "...", "details": ...}}``.

Routes raise :class:`ApiError` (an ``HTTPException``: only ``app/`` raises HTTP errors); the handlers here turn
those, FastAPI's validation errors, Starlette's 404/405 and the collection's own exceptions into that body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.route_table import allowed_methods
from indexer import CollectionError, ConsistencyError, DatabaseUnavailable

logger = logging.getLogger(__name__)

# python-multipart's limit on one header line of a part (DEFAULT_MAX_HEADER_SIZE), which holds the file name.
MULTIPART_HEADER_BYTES = 4096

# Status -> code used when an HTTPException did not name one (Starlette's own 404/405, for instance).
DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(HTTPException):
    """An HTTP error with a stable machine-readable ``code`` and a human message."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message
        self.details = details


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "k") -> "k"; ("query", "k") -> "k"; nested -> "metadata.0"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    details = []
    messages = []
    for err in errors:
        field = _field_name(tuple(err.get("loc", ())))
        where = err.get("loc", ("",))[0]
        kind = {"body": "form field", "query": "query parameter", "path": "path parameter"}.get(str(where), "field")
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "missing":
            msg = "required but missing"
        details.append({"field": field, "in": str(where), "message": msg, "type": err.get("type")})
        messages.append(f"{kind} '{field}': {msg}")
    return "; ".join(messages) or "invalid request", details


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = DEFAULT_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}; the API lives under /v1 (see /docs)"
        elif exc.status_code == 400 and "multipart" in message.lower():
            # python-multipart refuses a part header line over 4,096 bytes with no word of why: a file name that
            # long is the usual cause, so name it.
            message = (
                f"{message.rstrip('.')}: the body is not valid multipart/form-data (its boundary is missing, or a "
                f"part header is over {MULTIPART_HEADER_BYTES:,} bytes: a file name in field 'images' may be at "
                "most that long)"
            )
        elif exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's words for a JSON body that is not even text (invalid UTF-8): name the field and the form.
            message = "body: expected a JSON document in UTF-8; the body could not be decoded"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allowed = allowed_methods(request.app, request.url.path)
            message = f"method {request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = validation_message(list(exc.errors()))
        return error_response(422, "validation_error", message, details)

    def retry_later(request: Request, exc: Exception, code: str, what: str) -> JSONResponse:
        """503 + Retry-After. The cause (URLs, driver messages) stays in the server log: clients learn nothing
        about the infrastructure."""
        retry = request.app.state.settings.retry_after_s
        logger.warning("%s on %s %s: %s", code, request.method, request.url.path, exc)
        return error_response(503, code, f"{what} right now; retry in {retry} s", headers={"Retry-After": str(retry)})

    @app.exception_handler(DatabaseUnavailable)
    async def _db_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return retry_later(request, exc, "database_unavailable", "the metadata database is unreachable")

    @app.exception_handler(ConsistencyError)
    async def _inconsistent(request: Request, exc: ConsistencyError) -> JSONResponse:
        logger.error("collection inconsistent on %s %s: %s", request.method, request.url.path, exc)
        return error_response(500, "collection_inconsistent", "the collection needs attention; see the server log")

    @app.exception_handler(CollectionError)
    async def _collection_error(request: Request, exc: CollectionError) -> JSONResponse:
        # Requests are validated before they reach the collection, so what is left is the collection being unable
        # to serve right now (another process holding the write lock for too long, for instance).
        return retry_later(request, exc, "collection_unavailable", "the collection cannot serve this request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; the server log has the details")
