"""Request dependencies: the service object, API key checks, ``k``.

They are ``async def`` on purpose although they never await: FastAPI runs a plain ``def`` dependency in its thread
pool, which would cost every request three thread hand-offs before the route even starts.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, get_args, get_origin

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ApiError
from app.service import Service
from app.settings import Settings

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The key set in MSIR_API_KEY.")
_bearer = HTTPBearer(auto_error=False, description="The key set in MSIR_API_KEY, as a bearer token.")


async def get_service(request: Request) -> Service:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "not_ready", "the model and collection are still loading; retry shortly")
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _check_key(settings: Settings, header_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> None:
    if settings.api_key is None:
        raise ApiError(
            403,
            "writes_disabled",
            "this endpoint needs an API key, and the server has none configured: set MSIR_API_KEY on the server "
            "to enable it (there is no default key)",
        )
    given = header_key if header_key else (bearer.credentials if bearer is not None else None)
    if not given:
        raise ApiError(
            401,
            "missing_api_key",
            "API key required: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.api_key.get_secret_value()
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise ApiError(403, "invalid_api_key", "the API key sent is not the one configured (MSIR_API_KEY)")


async def require_write_key(
    settings: Annotated[Settings, Depends(get_settings)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    _check_key(settings, header_key, bearer)


async def require_read_key(
    settings: Annotated[Settings, Depends(get_settings)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if settings.read_requires_key:
        _check_key(settings, header_key, bearer)


def resolve_k(k: int | None, settings: Settings, field: str = "k") -> int:
    """``k`` or the default; 422 naming the field outside ``1..max_k``."""
    if k is None:
        return settings.default_k
    if k < 1 or k > settings.max_k:
        raise ApiError(
            422,
            "validation_error",
            f"{field}={k} is out of range: expected an integer from 1 to {settings.max_k} (MSIR_MAX_K)",
            details=[{"field": field, "message": f"must be between 1 and {settings.max_k}"}],
        )
    return k


def _is_sequence(annotation: Any) -> bool:
    """``list[str]``, ``list[UploadFile] | None``...: a field that may legitimately repeat."""
    if get_origin(annotation) in (list, tuple, set, frozenset):
        return True
    return any(_is_sequence(arg) for arg in get_args(annotation) if arg is not type(None))


def _params(dependant: Dependant, kind: str) -> list[Any]:
    """The route's query or body parameters, those of its dependencies included."""
    own = list(getattr(dependant, kind))
    return own + [p for sub in dependant.dependencies for p in _params(sub, kind)]


async def single_values(request: Request) -> None:
    """422 when a single-value query parameter or form field is sent more than once (``k`` twice, ``image``
    twice): FastAPI would silently keep the last one."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    repeated: list[tuple[str, str, int]] = []
    body_params = _params(dependant, "body_params")
    for field in _params(dependant, "query_params"):
        count = len(request.query_params.getlist(field.alias))
        if count > 1 and not _is_sequence(field.field_info.annotation):
            repeated.append(("query", field.alias, count))
    content_type = request.headers.get("content-type", "")
    if body_params and content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()  # already parsed (and cached) by FastAPI for the route's own fields
        for field in body_params:
            count = len(form.getlist(field.alias))
            if count > 1 and not _is_sequence(field.field_info.annotation):
                repeated.append(("body", field.alias, count))
    if repeated:
        kinds = {"query": "query parameter", "body": "form field"}
        raise ApiError(
            422,
            "validation_error",
            "; ".join(f"{kinds[where]} '{name}': sent {count} times, expected once" for where, name, count in repeated),
            details=[
                {"field": name, "in": where, "message": f"sent {count} times, expected once", "type": "repeated"}
                for where, name, count in repeated
            ],
        )


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
