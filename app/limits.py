"""Pure ASGI middlewares bounding what one request may cost: its body size, and how many run at once.

Body limit: a declared ``Content-Length`` over the limit is answered 413 before the application runs and before a
byte of the body is read. Bodies without one (chunked) are counted as they stream in: the moment the count passes
the limit, reading stops and the request fails with 413. Nothing is ever buffered here.

Admission: at most ``MSIR_MAX_IN_FLIGHT`` API requests are handled at once; up to ``MSIR_MAX_QUEUED`` more wait for
a slot, each for at most ``MSIR_QUEUE_TIMEOUT_S``. A request beyond the queue, or one that waited its budget out,
is answered 503 + Retry-After instead of piling up: under overload, the requests that are accepted stay fast and
the rest learn at once to come back later. A request's body is read to its end *before* it asks for a slot (spooled
to memory, then to a temporary file past ``SPOOL_MEMORY_BYTES``): a client that sends its body slowly, or stalls
half-way, holds only its connection (bounded by ``MSIR_MAX_CONNECTIONS`` and the minimum body rate in
``app.connections``), never one of the slots that searches need.

Per client: one client address may hold at most ``MSIR_MAX_PER_CLIENT`` of those slots and queue places at once
(default: half of them); its next request is answered 429 + Retry-After at once, so a single busy or misbehaving
client cannot take the whole server from the others. Behind a reverse proxy the address is the proxy's unless
uvicorn is told to trust its forwarded headers (``--forwarded-allow-ips``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections import Counter, deque
from typing import IO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_body

logger = logging.getLogger(__name__)

# Bodies up to this size are held in memory while they wait for a slot; larger ones go to a temporary file, so
# MSIR_MAX_CONNECTIONS slow uploads cost at most this much memory each.
SPOOL_MEMORY_BYTES = 256 * 1024
# Size of the chunks a spooled body is handed to the application in.
REPLAY_CHUNK_BYTES = 64 * 1024


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, seen: int | None = None) -> None:
        what = f"request body of {seen:,} bytes" if seen is not None else "request body"
        super().__init__(
            413,
            "payload_too_large",
            f"{what} exceeds the limit of {limit:,} bytes (MSIR_MAX_UPLOAD_BYTES)",
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
    await _send_json(send, 413, error_body(exc.code, exc.message), [(b"connection", b"close")])


async def _send_json(send: Send, status: int, content: dict[str, object], headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AdmissionMiddleware:
    """Cap the API requests handled at once; queue a bounded number for a bounded time; shed the rest with 503.

    Only paths under ``/v1/`` are admitted this way: probes (``/healthz``, ``/readyz``), ``/metrics`` and the
    static UI must keep answering while the API is saturated.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        max_queued: int,
        queue_timeout_s: float,
        retry_after_s: int,
        max_per_client: int = 0,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.max_per_client = max_per_client  # 0: no per-client cap
        self.in_flight = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._per_client: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away (or was cut off as too slow) before its body was complete
            return
        client = _client_of(scope)
        try:
            if self.max_per_client and self._per_client[client] >= self.max_per_client:
                await self._refuse_client(send)
                return
            self._per_client[client] += 1
            try:
                await self._admitted(scope, body.replay(receive), send)
            finally:
                self._per_client[client] -= 1
                if not self._per_client[client]:
                    del self._per_client[client]
        finally:
            body.close()

    async def _refuse_client(self, send: Send) -> None:
        await _send_json(
            send,
            429,
            error_body(
                "too_many_requests",
                f"this client already has {self.max_per_client} requests in progress (MSIR_MAX_PER_CLIENT); "
                f"wait for one to finish or retry in {self.retry_after_s} s",
            ),
            [(b"retry-after", str(self.retry_after_s).encode())],
        )

    async def _admitted(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self._acquire():
            await _send_json(
                send,
                503,
                error_body(
                    "overloaded",
                    f"the server is handling as many requests as it can (MSIR_MAX_IN_FLIGHT={self.max_in_flight}); "
                    f"retry in {self.retry_after_s} s",
                ),
                [(b"retry-after", str(self.retry_after_s).encode())],
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._release()

    async def _acquire(self) -> bool:
        if self.in_flight < self.max_in_flight and not self._waiting:
            self.in_flight += 1
            return True
        if len(self._waiting) >= self.max_queued:
            return False
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(slot)
        try:
            await asyncio.wait_for(asyncio.shield(slot), self.queue_timeout_s)
            return True  # _release handed its slot over: in_flight already counts this request
        except TimeoutError:
            if slot.done():  # handed over just as the budget ran out: take it after all
                return True
            self._waiting.remove(slot)
            return False
        except BaseException:  # cancelled (client gone, shutdown): pass a slot handed over meanwhile on
            if slot.done():
                self._release()
            elif slot in self._waiting:
                self._waiting.remove(slot)
            raise

    def _release(self) -> None:
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes to the longest waiter: in_flight is unchanged
                return
        self.in_flight -= 1


def _client_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class _SpooledBody:
    """A complete request body, held until the request is admitted, then handed to the application as the
    ``http.request`` messages it would have received (the original ``receive`` takes over after the last one, so
    that a disconnect is still seen)."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if chunk:
            self.file.write(chunk)
            self.size += len(chunk)

    def replay(self, receive: Receive) -> Receive:
        self.file.seek(0)
        remaining = self.size
        done = False

        async def replaying_receive() -> Message:
            nonlocal remaining, done
            if done:
                return await receive()
            chunk = self.file.read(min(REPLAY_CHUNK_BYTES, remaining)) if remaining else b""
            remaining -= len(chunk)
            done = remaining <= 0
            return {"type": "http.request", "body": chunk, "more_body": not done}

        return replaying_receive

    def close(self) -> None:
        self.file.close()


async def _read_body(receive: Receive) -> _SpooledBody | None:
    """The whole body (empty for a request without one), or None when the client disconnected first."""
    body = _SpooledBody()
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body.close()
                return None
            body.write(message.get("body", b""))
            if not message.get("more_body", False):
                return body
    except BaseException:
        body.close()
        raise
