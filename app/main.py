"""The FastAPI application: ``create_app(settings)``.

The model and the collection are opened once, in the lifespan hook, and shared by every request; the collection
runs reads concurrently and serialises writes itself (its own lock), so nothing here locks again.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import anyio.to_thread
import httpx
import torch
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from app.deps import single_values
from app.errors import install_error_handlers
from app.limits import AdmissionMiddleware, BodyLimitMiddleware
from app.openapi import install_openapi
from app.query_images import sample_image
from app.routes import classify, collection, explanations, feedback_search, health, images, near_duplicates, search
from app.routes import map as map_route
from app.service import Service
from app.settings import Settings
from app.telemetry import Metrics, MetricsMiddleware
from indexer import Collection
from indexer.vectors.backends import BackendConfig
from indexer.verification import settle_dead_uploads
from msir_core.allocator import keep_freed_buffers

# Searches the warm-up sends through the app: more than one, since Python specialises the bytecode of a code path
# only after it ran a few times, and the first answers of a fresh process were measurably slower than later ones.
WARM_UP_SEARCHES = 20
logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")


def _version() -> str:
    try:
        return version("msir")
    except PackageNotFoundError:
        return "0.0.0"


def open_collection(settings: Settings) -> Collection:
    logger.info(
        "opening collection %s (device=%s, runtime=%s)", settings.collection_dir, settings.device, settings.runtime
    )
    return Collection.open(
        settings.collection_dir,
        checkpoint=settings.checkpoint,
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
        device=settings.device,
        runtime=settings.runtime,
        backend_config=BackendConfig(
            milvus_uri=settings.milvus_uri,
            milvus_token=settings.milvus_token.get_secret_value() if settings.milvus_token else None,
            mmap=settings.index_mmap,
        ),
    )


@contextmanager
def torch_threads(settings: Settings) -> Iterator[None]:
    """Apply MSIR_TORCH_THREADS while serving and put the previous value back afterwards: it is process-wide, and
    an app built in a test must not change the threads of the tests that follow. (FAISS's OpenMP setting is per
    thread: the service applies MSIR_FAISS_THREADS in the threads that search.)"""
    before = torch.get_num_threads()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def create_app(settings: Settings | None = None, opened: Collection | None = None) -> FastAPI:
    """Build the service; nothing heavy happens until the lifespan starts (model, index, database).

    ``opened``: a collection already opened (``msir-serve`` opens it first, to refuse cleanly when it cannot be); the
    app takes it over and closes it at shutdown."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keep_freed_buffers(settings.malloc_mmap_threshold_mb)  # process-wide, like the threads; nothing to undo
        with torch_threads(settings):
            async with _serving(app):
                yield

    @asynccontextmanager
    async def _serving(app: FastAPI) -> AsyncIterator[None]:
        col = opened if opened is not None else await anyio.to_thread.run_sync(open_collection, settings)
        # Uploads a killed process left half-done: moved in when their row was committed, removed otherwise.
        await anyio.to_thread.run_sync(settle_dead_uploads, col)
        service = Service(settings, col, metrics)
        await service.start()
        metrics.index_size.set(service.index_size())
        app.state.service = service
        await _first_request(app, service)
        # Everything built so far (the model, the index, the libraries' objects) lives as long as the process: moved
        # out of the collector's generations, it is not traversed again by every full collection, which otherwise
        # pauses an answer for milliseconds now and then.
        gc.collect()
        gc.freeze()
        service.warmed_up = True
        logger.info(
            "serving %d images, model %s, micro-batching %s",
            service.index_size(),
            col.embedder.meta.model_name,
            f"max {settings.batch_max_size} / {settings.batch_max_wait_ms} ms" if settings.batching_enabled else "off",
        )
        try:
            yield
        finally:
            app.state.service = None
            await service.stop()
            await anyio.to_thread.run_sync(col.close)
            logger.info("collection closed")

    async def _first_request(app: FastAPI, service: Service) -> None:
        """Searches through the whole HTTP stack (middlewares, form parsing, validation, serialisation), answered
        in-process before /readyz says ready: the first user's request then pays none of their first-call costs."""
        key = settings.api_key.get_secret_value() if settings.api_key and settings.read_requires_key else None
        image = sample_image("JPEG", service.spec.image_size)
        started = time.perf_counter()
        try:
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 0))
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                for _ in range(WARM_UP_SEARCHES):
                    answer = await client.post(
                        "/v1/search",
                        files={"image": ("warm-up.jpg", image, "image/jpeg")},
                        headers={"X-API-Key": key} if key else None,
                    )
                    if answer.status_code != 200:
                        break
        except (httpx.HTTPError, OSError) as exc:
            logger.warning("warm-up search through the app failed: %s", exc)
            return
        if answer.status_code != 200:  # a database down at start-up: /readyz reports it (database_unavailable)
            logger.warning("warm-up search through the app answered %d: %s", answer.status_code, answer.text[:300])
        logger.info("warm-up search through the app: %.0f ms", (time.perf_counter() - started) * 1000.0)

    app = FastAPI(
        title="msir",
        summary="Content-based image retrieval: similar images and class predictions.",
        version=_version(),
        lifespan=lifespan,
        # Swagger UI is served from the packaged assets below, not FastAPI's default CDN: /docs must work on hosts
        # with no internet access. ReDoc would need a CDN too, so it is off.
        docs_url=None,
        redoc_url=None,
        # A single-value field sent twice is a 422, not silently the last one.
        dependencies=[Depends(single_values)],
    )
    install_openapi(app, settings)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    install_error_handlers(app)
    for module in (
        feedback_search,
        search,
        images,
        classify,
        collection,
        health,
        near_duplicates,
        map_route,
        explanations,
    ):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="msir API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    # Added innermost first: metrics (outermost) -> CORS (so that a browser can read a 503 too) -> body limit ->
    # admission (which reads the whole body, under the body limit, before it takes a slot) -> routes.
    app.add_middleware(
        AdmissionMiddleware,
        max_in_flight=settings.max_in_flight,
        max_queued=settings.max_queued,
        queue_timeout_s=settings.queue_timeout_s,
        retry_after_s=settings.retry_after_s,
        max_per_client=settings.per_client_cap,
    )
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
