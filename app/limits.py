"""Request body limit as a pure ASGI middleware.

A declared ``Content-Length`` over the limit is answered 413 before the application runs and before a byte of
the body is read. Bodies without one (chunked) are counted as they stream in: the moment the count passes the
limit, reading stops and the request fails with 413. Nothing is ever buffered here.
"""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_body

logger = logging.getLogger(__name__)


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, seen: int | None = None) -> None:
        amount = f"{seen:,} bytes" if seen is not None else "more"
        super().__init__(
            413,
            "payload_too_large",
            f"request body of {amount} exceeds the limit of {limit:,} bytes (MSIR_MAX_UPLOAD_BYTES)",
            # Close the connection: otherwise the server would go on receiving (and discarding) the rest.
            headers={"Connection": "close"},
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            logger.info("refused %s %s: Content-Length %d > %d", scope["method"], scope["path"], declared, limit)
            await _send_413(send, BodyTooLarge(limit, declared))
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    logger.info("aborted %s %s: body passed %d bytes", scope["method"], scope["path"], limit)
                    # An HTTPException: FastAPI re-raises it from body parsing, so the route never runs and
                    # the exception handlers answer with the JSON 413.
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # Raised outside FastAPI's handling (a streaming reader in middleware, for instance).
            if response_started:
                raise
            await _send_413(send, exc)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, exc: BodyTooLarge) -> None:
    body = json.dumps(error_body(exc.code, exc.message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
