"""The OpenAPI document as the running server behaves under its settings.

FastAPI documents what the route declarations say; some of what the server enforces depends on the settings:

* the read endpoints take the API key only with ``MSIR_READ_REQUIRES_KEY``: otherwise they declare no security and
  no 401/403 answer;
* ``k`` is bounded by ``1..MSIR_MAX_K``;
* ``images`` needs at least one file, and a query ``image`` at least one byte;
* a filter label is free text: which labels exist is the collection's data, not its schema (a label no image
  carries gets a documented 422 ``unknown_label``);
* ``vector`` holds exactly ``embedding_dim`` numbers;
* ``metadata`` is JSON text: documented as the JSON object it must hold.

schemathesis (tests/app/test_schemathesis.py) checks the server against this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi

from app.deps import require_read_key
from app.route_table import api_routes
from app.settings import Settings


def _uses(dependant: Dependant, call: Any) -> bool:
    return any(d.call is call or _uses(d, call) for d in dependant.dependencies)


def _integer_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The ``integer`` schema of ``int`` or ``int | None`` (``anyOf`` with null)."""
    for branch in schema.get("anyOf", []):
        if branch.get("type") == "integer":
            return branch  # type: ignore[no-any-return]
    return schema


def _bound_k(schema: dict[str, Any], max_k: int) -> None:
    target = _integer_branch(schema)
    target["minimum"] = 1
    target["maximum"] = max_k


def _file(schema: dict[str, Any]) -> None:
    for branch in [schema, schema.get("items", {})]:
        if branch.get("type") == "string" and ("contentMediaType" in branch or branch.get("format") == "binary"):
            branch["format"] = "binary"  # what OpenAPI tools (and schemathesis's file strategies) look for
    if schema.get("type") == "string":
        # A query image must hold bytes. (One of several uploaded files may be empty: it is reported under
        # `failures` while the others are added.)
        schema["minLength"] = 1


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Metadata",
    "description": (
        "JSON object stored with every image (sent as JSON text). A JSON list with one object per image is "
        "accepted too. Bounded by MSIR_MAX_METADATA_BYTES, MSIR_MAX_METADATA_DEPTH and MSIR_MAX_METADATA_KEYS."
    ),
}


def build_openapi(app: FastAPI, settings: Settings, dim: int | None = None) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    open_reads = {
        (path, method.lower())
        for path, methods, _, dependant in api_routes(app)
        if _uses(dependant, require_read_key) and not settings.read_requires_key
        for method in methods
    }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if (path, method) in open_reads:
                operation.pop("security", None)
                for status in ("401", "403"):
                    operation.get("responses", {}).pop(status, None)
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "k":
                    _bound_k(parameter["schema"], settings.max_k)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            if content and "400" not in operation.get("responses", {}):
                form = any(t in content for t in FORM_TYPES)
                operation["responses"]["400"] = {
                    "description": "A body that cannot be parsed: "
                    + ("not valid multipart/form-data." if form else "not JSON text in UTF-8."),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                }
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        properties = schema.get("properties", {})
        vector = properties.get("vector", {})
        if dim and vector.get("type") == "array":
            vector["minItems"] = vector["maxItems"] = dim  # the collection's embedding_dim
            vector["contains"] = {"not": {"const": 0}}  # an all-zero vector has no direction to search along
        if name == "VectorSearchRequest" and "k" in properties:
            _bound_k(properties["k"], settings.max_k)
        if not name.startswith("Body_"):
            continue
        for prop in properties.values():
            # A form has no null: an optional field is left out. (Sent as text, "null" is a value like any other.)
            branches = prop.get("anyOf")
            if branches and any(b.get("type") == "null" for b in branches):
                rest = [b for b in branches if b.get("type") != "null"]
                prop.pop("anyOf")
                if len(rest) == 1:
                    prop.update(rest[0])
                else:
                    prop["anyOf"] = rest
        if "k" in properties:
            _bound_k(properties["k"], settings.max_k)
        if properties.get("images", {}).get("type") == "array":
            properties["images"]["minItems"] = 1
        for field in ("image", "images"):
            if field in properties:
                _file(properties[field])
        if "metadata" in properties:
            properties["metadata"] = dict(METADATA_SCHEMA)
    return document


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        # The vector's length is the model's embedding_dim: known once the lifespan has opened the collection.
        service = getattr(app.state, "service", None)
        dim = int(service.collection.embedder.dim) if service is not None else None
        if app.openapi_schema is None or (dim and not getattr(app.state, "openapi_has_dim", False)):
            app.openapi_schema = build_openapi(app, settings, dim)
            app.state.openapi_has_dim = bool(dim)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
