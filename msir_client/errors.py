"""Exceptions of the client: one per kind of server answer, each carrying the server's ``code`` and ``message``."""

from __future__ import annotations

from typing import Any

import httpx


class MsirError(Exception):
    """Base of every error the client raises."""


class MsirConnectionError(MsirError):
    """The server could not be reached (refused, reset, DNS); the httpx error is the ``__cause__``."""


class MsirTimeout(MsirConnectionError):
    """No answer within the client's timeout."""


class ApiError(MsirError):
    """The server answered with an error body ``{"error": {"code", "message", "details"}}``."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Any = None,
        *,
        retry_after_s: float | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s
        self.response = response


class BadRequest(ApiError):
    """400, and any other 4xx without a class of its own."""


class Unauthorized(ApiError):
    """401: the endpoint needs the API key and none was sent."""


class Forbidden(ApiError):
    """403: wrong API key, or the server has none configured."""


class NotFound(ApiError):
    """404: unknown image id (or route)."""


class Conflict(ApiError):
    """409."""


class PayloadTooLarge(ApiError):
    """413: the request or the image is over the server's limits."""


class UnsupportedImage(ApiError):
    """415: a file that is not an image format the server decodes."""


class ValidationFailed(ApiError):
    """422: a missing or invalid field, or a corrupt image; ``details`` names the fields."""


class ServiceUnavailable(ApiError):
    """503 still answered after the client's retries (database down, model loading)."""


class ServerError(ApiError):
    """500 and other 5xx."""


BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedImage,
    422: ValidationFailed,
    503: ServiceUnavailable,
}


def retry_after(response: httpx.Response) -> float | None:
    """Seconds of a ``Retry-After: N`` header (the HTTP-date form is not used by msir and is ignored)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer, with the server's code and message (or the raw text if not msir's)."""
    status = response.status_code
    code, message, details = f"http_{status}", response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code", code))
        message = str(error.get("message", message))
        details = error.get("details")
    elif response.text:
        message = response.text[:500]
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else BadRequest)
    return cls(status, code, message, details, retry_after_s=retry_after(response), response=response)
