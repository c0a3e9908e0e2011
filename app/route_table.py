"""The API's routes as a table (path, methods, regex, dependencies) and the ``Allow`` header of 405 answers.

Imports nothing of ``app``, so the error handlers and the OpenAPI builder can both use it without a cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute


def api_routes(app: FastAPI) -> Iterator[tuple[str, set[str], Any, Dependant]]:
    """``(path template, methods, path regex, dependant)`` of every API route, included routers' too."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:  # FastAPI without route contexts: included routes are plain APIRoutes
        for route in app.routes:
            if isinstance(route, APIRoute):
                yield route.path_format, set(route.methods), route.path_regex, route.dependant
        return
    for context in contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context.path_format, set(context.methods or ()), context.path_regex, context.dependant


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of this path accepts: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for _, route_methods, regex, _ in api_routes(app):
        if regex is not None and regex.match(path):
            methods |= route_methods
    return sorted(methods)
