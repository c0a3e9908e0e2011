"""Python client of the msir REST API (blocking and asyncio), on httpx.

Answers are the server's own pydantic models (``msir_schemas.api``); error answers raise the exceptions of
:mod:`msir_client.errors` with the server's ``code`` and ``message``. Importing the client loads neither torch nor
FastAPI.
"""

from msir_client.calls import NO_RETRY, ImageInput, RetryPolicy
from msir_client.client import AsyncClient, Client
from msir_client.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    MsirConnectionError,
    MsirError,
    MsirTimeout,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedImage,
    ValidationFailed,
)

__all__ = [
    "NO_RETRY",
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "Forbidden",
    "ImageInput",
    "MsirConnectionError",
    "MsirError",
    "MsirTimeout",
    "NotFound",
    "PayloadTooLarge",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedImage",
    "ValidationFailed",
]
