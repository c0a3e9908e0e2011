"""Connection-level protection of ``msir-serve``: slow clients and too many connections.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but bounds neither how long the request head may
take to arrive nor how slowly the body may trickle in: 1,000 clients sending one byte every 10 s held 1,000 open
files for as long as they liked. An ASGI middleware cannot help, since the application only sees a request once its
headers are complete, so this is uvicorn's own httptools protocol with three additions:

* **header timeout**: the request line and headers must be complete within ``MSIR_HEADER_TIMEOUT_S`` of the
  connection opening (or of the first byte of a following request on a kept-alive connection), and stay under
  ``MSIR_MAX_HEADER_BYTES``; otherwise 408 / 431 and the connection is closed;
* **minimum body rate**: after ``MSIR_BODY_GRACE_S``, the body must keep arriving at ``MSIR_MIN_BODY_RATE`` bytes/s
  on average, else 408 and close (time during which the server itself stopped reading does not count);
* **connection cap**: beyond ``MSIR_MAX_CONNECTIONS`` open connections a new one is answered 503 + Retry-After and
  closed at once.

``msir-serve`` passes ``http="app.connections:GuardedHttpToolsProtocol"`` to uvicorn; the limits come from the
settings (set by :func:`configure`, or read from the environment in a worker process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings

logger = logging.getLogger(__name__)

PROTOCOL = "app.connections:GuardedHttpToolsProtocol"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_header_bytes: int
    body_grace_s: float
    min_body_rate: float  # bytes per second
    max_connections: int
    retry_after_s: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            body_grace_s=settings.body_grace_s,
            min_body_rate=float(settings.min_body_rate),
            max_connections=settings.max_connections,
            retry_after_s=settings.retry_after_s,
        )


_limits: ConnectionLimits | None = None


def configure(settings: Settings) -> None:
    """Set the limits of every connection accepted from now on (``msir-serve`` calls it before uvicorn starts)."""
    global _limits
    _limits = ConnectionLimits.from_settings(settings)


def current_limits() -> ConnectionLimits:
    global _limits
    if _limits is None:  # a uvicorn worker process: the settings come from the environment, as for the app
        _limits = ConnectionLimits.from_settings(Settings())
    return _limits


def _raw_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    code = reason.lower().replace(" ", "_")
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{extra}connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a header timeout, a header size cap, a minimum body rate and a
    connection cap (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = current_limits()
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = False  # between the first byte of a request and its complete headers
        self._head_bytes = 0
        self._body_started = 0.0
        self._body_received = 0
        self._in_body = False

    # --- connection ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            logger.warning("refused a connection: %d open (MSIR_MAX_CONNECTIONS)", len(self.connections) - 1)
            retry = self.limits.retry_after_s
            self._refuse(
                503,
                "Service Unavailable",
                f"too many open connections; retry in {retry} s",
                f"retry-after: {retry}\r\n",
            )
            return
        # The first request's head must arrive within the header timeout of connecting.
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Parse first: one read may carry a complete head plus the start of a large body (coalesced TCP segments
        # on a busy host); only bytes that leave the head still incomplete count against the header limit.
        was_in_head = self._in_head
        super().data_received(data)
        if not (was_in_head and self._in_head) or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                f"request line and headers over {self.limits.max_header_bytes:,} bytes (MSIR_MAX_HEADER_BYTES)",
            )

    # --- parser callbacks --------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # a following request on a kept-alive connection: its own header deadline
            self._start_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel()
        super().on_headers_complete()
        length = dict(self.headers or []).get(b"content-length", b"0")
        chunked = b"chunked" in dict(self.headers or []).get(b"transfer-encoding", b"").lower()
        if chunked or (length.strip().isdigit() and int(length) > 0):
            self._in_body = True
            self._body_started = time.monotonic()
            self._body_received = 0
            self._arm_body()

    def on_body(self, body: bytes) -> None:
        if self._in_body:
            self._body_received += len(body)
            self._arm_body()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel()
        super().on_message_complete()

    # --- timers ------------------------------------------------------------------------------------------------

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._cancel()
        self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._in_head and not self.transport.is_closing():
            logger.info(
                "closed a connection from %s: headers not complete within %s s",
                self.client,
                self.limits.header_timeout_s,
            )
            self._refuse(
                408,
                "Request Timeout",
                f"request headers not complete within {self.limits.header_timeout_s} s (MSIR_HEADER_TIMEOUT_S)",
            )

    def _arm_body(self) -> None:
        """The body is late once fewer bytes have arrived than ``min_body_rate`` x (elapsed - grace)."""
        self._cancel()
        due = self._body_started + self.limits.body_grace_s + self._body_received / self.limits.min_body_rate
        self._timer = self.loop.call_later(max(0.0, due - time.monotonic()) + 0.01, self._body_timed_out)

    def _body_timed_out(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:
            # The server stopped reading (the application has not consumed what came): not the client's fault.
            self._body_started = time.monotonic() - self._body_received / self.limits.min_body_rate
            self._arm_body()
            return
        logger.info("closed a connection from %s: request body slower than the minimum rate", self.client)
        started = self.cycle is not None and self.cycle.response_started
        message = (
            f"request body slower than {self.limits.min_body_rate:,.0f} bytes/s after {self.limits.body_grace_s} s "
            "(MSIR_MIN_BODY_RATE)"
        )
        if started:
            self.transport.close()
        else:
            self._refuse(408, "Request Timeout", message)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, reason: str, message: str, extra: str = "") -> None:
        self._in_head = self._in_body = False
        self._cancel()
        if self.cycle is not None:
            # The application (if running) must not write after this answer: it sees a disconnect instead.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, message, extra))
            self.transport.close()
