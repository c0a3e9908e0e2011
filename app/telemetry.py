"""Prometheus metrics: one registry per app (tests build several apps in one process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "msir_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "msir_http_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "msir_inference_seconds",
            "Forward pass time of one (micro-)batch.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "msir_inference_batch_size",
            "Images per forward pass (micro-batching).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.index_size = Gauge("msir_index_size", "Vectors in the served FAISS index.", registry=self.registry)
        self.stage = Histogram(
            "msir_stage_seconds",
            "Time per request stage (decode, preprocess, embed, search, database).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.inference.observe(seconds)
        self.batch_size.observe(size)


class MetricsMiddleware:
    """Count requests and latency by route *template* (``/v1/images/{image_id}``), never by raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label so that scanners cannot blow up the label space.
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "<unmatched>"
            labels = (scope["method"], template, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
