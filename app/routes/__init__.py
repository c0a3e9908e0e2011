"""Thin typed routes, one module per resource."""

from __future__ import annotations

from typing import Any

from msir_schemas.api import ErrorResponse

_DESCRIPTIONS = {
    400: "A body that is not valid multipart/form-data (or application/x-www-form-urlencoded).",
    401: "API key missing.",
    403: "API key wrong, or no key configured on the server (MSIR_API_KEY).",
    404: "Unknown image id or route.",
    413: "Request body over MSIR_MAX_UPLOAD_BYTES, or image over MSIR_MAX_PIXELS.",
    415: "A file that is not an image format Pillow can decode.",
    422: "Missing or invalid field, or an empty, corrupt or truncated image.",
    501: "Not available for this server's model (heat-maps: MSCFNet and the ViTs).",
    429: "This client already has MSIR_MAX_PER_CLIENT requests in progress: Retry-After says when to retry.",
    503: (
        "Overloaded (more requests than MSIR_MAX_IN_FLIGHT + MSIR_MAX_QUEUED), or the metadata database is "
        "unreachable: Retry-After says when to retry."
    ),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all share ErrorResponse)."""
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}
