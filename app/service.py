"""What the routes share: the open collection, the (micro-batched) model and the blocking-work pool.

Routes stay thin: they parse and validate the request, call one of these methods and shape the response. Every
blocking call (decoding, preprocessing, FAISS, the database, file reads) runs in a bounded thread pool. A query
image that arrives while nothing else is in flight makes one trip to that pool for decode + forward pass + search
(:meth:`Service.query`); under concurrency its forward pass is coalesced with others' by the micro-batcher, in the
batcher's own thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import faiss
import numpy as np
from fastapi import UploadFile

from app.batching import DirectEmbedder, MicroBatcher
from app.derived import DerivedCache
from app.errors import ApiError
from app.query_images import Prepared, decode_error, prepare_image, sample_image
from app.settings import Settings
from app.shaping import neighbour, split_labels
from app.sqltiming import SqlTimer
from app.telemetry import Metrics
from app.thumbnails import ThumbnailCache
from indexer import Collection, CollectionError, Hit, RerankConfig
from indexer.metadata.queries import UNLABELLED
from indexer.predict import knn_vote
from models import ImageDecodeError
from models.similarity_maps import Explainer
from msir_core.retrieval.calibration import Calibration, CalibrationError, calibration_path, load_calibration
from msir_core.retrieval.probabilities import top_classes
from msir_schemas.api import (
    ClassScore,
    CollectionInfo,
    ImageInfo,
    KnnPrediction,
    Neighbour,
    PredictionsScope,
    SearchResponse,
    SyncState,
    Timings,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
# /v1/collection counts labels over every row (a scan): cached, recomputed when the feed position moved (at most once
# per STATS_MIN_AGE_S, so a stream of writes elsewhere does not turn every request into a scan) or after STATS_TTL_S.
STATS_TTL_S = 30.0
STATS_MIN_AGE_S = 1.0
# Warm-up before /readyz says ready: the first passes of a model pay for lazy initialisation (ONNX Runtime's and
# oneDNN's kernel choices, allocator growth, FAISS and SQLite first touches), which the first user's query would
# otherwise pay. A few passes of each served batch shape and one search make that query cost what the later ones do.
WARMUP_PASSES = 3


def find_calibration(weights: Path, weights_sha256: str) -> Calibration | None:
    """The checkpoint's ``NAME.calibration.json`` when there is one for these weights; a missing file is normal, an
    unusable one is logged and ignored (search still works, without probabilities)."""
    path = calibration_path(weights)
    if not path.is_file():
        return None
    try:
        calibration = load_calibration(path, weights_sha256)
    except CalibrationError as exc:
        logger.warning("calibration not used: %s", exc)
        return None
    logger.info("calibration: %s (%d steps)", path.name, len(calibration.scores))
    return calibration


@dataclass(frozen=True)
class SearchArgs:
    """What to search for a query image (None: classify only)."""

    k: int
    labels: list[str] | None = None
    split: str | None = None
    exclude_duplicates: bool = False
    rerank: RerankConfig | None = None


@dataclass
class QueryResult:
    prepared: Prepared
    embedding: np.ndarray  # float32 [D], L2-normalised
    logits: np.ndarray  # float32 [num_classes]
    hits: list[Hit] | None  # None when no search was asked for


@dataclass
class StageTimer:
    """Milliseconds per stage of one request."""

    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds * 1000.0

    def as_dict(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.stages.items()}
        out["total"] = round((time.perf_counter() - self.started) * 1000.0, 3)
        return out


class Service:
    def __init__(self, settings: Settings, collection: Collection, metrics: Metrics) -> None:
        self.settings = settings
        self.collection = collection
        self.metrics = metrics
        self.limiter = anyio.CapacityLimiter(settings.blocking_threads)
        embedder = collection.embedder
        self.class_names: list[str] = list(embedder.class_names)
        self.multi_label: bool = bool(embedder.multi_label)
        self.spec = embedder.spec
        self.calibration = find_calibration(embedder.checkpoint_path, embedder.checkpoint_sha256)
        self.explainer = Explainer(embedder.checkpoint_path)  # loads its torch model on first use
        fn = self._forward
        self.model: MicroBatcher | DirectEmbedder = (
            MicroBatcher(
                fn, settings.batch_max_size, settings.batch_max_wait_ms, metrics.observe_batch, self._search_batch
            )
            if settings.batching_enabled
            else DirectEmbedder(fn, self.limiter, metrics.observe_batch, self._search_batch)
        )
        self._stats: tuple[float, tuple[int, int], dict[str, Any]] | None = None
        self.warmed_up = False  # /readyz answers 503 until the app's warm-up (app.main) finished
        self.db_timer = SqlTimer(collection.store.engine)
        self.thumbnails = ThumbnailCache(
            settings.resolved_thumbnail_dir(), settings.thumbnail_size, settings.max_pixels
        )
        self._stage_histograms: dict[str, Any] = {}
        self.derived = DerivedCache()  # duplicate groups and the map, once per index position

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.collection.embedder.embed_uint8(batch)
        return np.asarray(result.embeddings, dtype=np.float32), np.asarray(result.logits, dtype=np.float32)

    async def start(self) -> None:
        await self.model.start()
        # Other processes' writes (msir-index, other workers, replicas) reach this index within the interval.
        self.collection.start_following(self.settings.sync_interval_ms / 1000.0)
        await self.warm_up()

    async def warm_up(self) -> None:
        """Forward passes and a search before the service calls itself ready (see WARMUP_PASSES)."""
        started = time.perf_counter()
        await self.blocking(self._warm_up)
        try:
            await self.stats()  # every answer names its predictions' scope from them: not the first user's scan
        except CollectionError as exc:
            logger.warning("warm-up statistics failed: %s", exc)
        logger.info("model, decoders, index and rows warmed up in %.0f ms", (time.perf_counter() - started) * 1000.0)

    def _warm_up(self) -> None:
        # The decoders too: a first JPEG or PNG loads its Pillow plugin and codec (several ms on the first query).
        for fmt in ("JPEG", "PNG", "WEBP"):
            try:
                data = sample_image(fmt, self.spec.image_size)
                prepare_image(data, self.spec, self.settings.max_pixels, f"warm-up.{fmt}")
            except (ImageDecodeError, OSError, KeyError) as exc:  # a Pillow built without that codec
                logger.debug("warm-up decode of %s skipped: %s", fmt, exc)
        blank = np.zeros((1, self.spec.channels, *self.spec.image_size), dtype=np.uint8)
        embeddings = self._forward(blank)[0]
        sizes = [1] * WARMUP_PASSES
        if self.settings.batching_enabled:
            sizes.append(min(2, self.settings.batch_max_size))  # the batcher's shapes, not only a lone query's
        for size in sizes:
            self._forward(np.repeat(blank, size, axis=0))
        if self.index_size() == 0:
            return
        try:
            self._timed_search(embeddings, self.settings.default_k)
            # The first users' neighbours come from the rows' cache, not SQL (all of them in a collection that fits).
            self.collection.warm_rows()
        except CollectionError as exc:
            # A database that is down at start-up is /readyz's to report (database_unavailable), not a reason to
            # refuse to start.
            logger.warning("warm-up search failed: %s", exc)

    async def stop(self) -> None:
        await self.blocking(self.collection.stop_following)
        await self.model.stop()
        self.db_timer.close()

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self.limiter)

    # --- query images -------------------------------------------------------------------------------------

    async def read_upload(self, upload: UploadFile, field_name: str) -> bytes:
        # The body limit middleware already bounded the request; this is at most max_upload_bytes.
        data = await upload.read()
        if not data:
            raise ApiError(422, "invalid_image", f"form field '{field_name}': empty file (0 bytes)")
        return data

    async def prepare(self, upload: UploadFile, field_name: str, timer: StageTimer) -> Prepared:
        """Upload -> model input: decode (limits checked), hash and preprocess in one trip to a worker thread."""
        started = time.perf_counter()
        data = await self.read_upload(upload, field_name)
        filename = upload.filename or field_name
        try:
            prepared = await self.blocking(prepare_image, data, self.spec, self.settings.max_pixels, filename)
        except ImageDecodeError as exc:
            raise decode_error(exc, field_name) from exc
        timer.add("decode", prepared.decode_s + (prepared.started - started))
        timer.add("preprocess", prepared.preprocess_s)
        return prepared

    async def query(
        self, upload: UploadFile, field_name: str, timer: StageTimer, search: SearchArgs | None
    ) -> QueryResult:
        """Decode, embed and (optionally) search one uploaded image.

        Alone (nothing else in flight) it is one trip to a worker thread, the fewest thread hand-offs the event loop
        allows; with company it takes the batched path so concurrent forward passes are coalesced."""
        if not self.model.idle():
            with self.model.track():
                prepared = await self.prepare(upload, field_name, timer)
                started = time.perf_counter()
                # The batch's searches run in the model thread right after its forward pass, in one FAISS call.
                context = None if search is None else (search, prepared.sha256)
                embedding, logits, found = await self.model.embed_then(prepared.array, context)
            hits = None
            if found is not None:
                hits, search_s, db_s = found
                timer.add("search", max(search_s - db_s, 0.0))
                timer.add("database", db_s)
                timer.add("embed", time.perf_counter() - started - search_s)
            else:
                timer.add("embed", time.perf_counter() - started)
            return QueryResult(prepared, embedding, logits, hits)
        data = await self.read_upload(upload, field_name)
        filename = upload.filename or field_name
        queued = time.perf_counter()
        with self.model.solo():
            try:
                result, forward_s, search_s, db_s = await self.blocking(self._query_alone, data, filename, search)
            except ImageDecodeError as exc:
                raise decode_error(exc, field_name) from exc
        prepared = result.prepared
        timer.add("decode", prepared.decode_s + (prepared.started - queued))
        timer.add("preprocess", prepared.preprocess_s)
        timer.add("embed", forward_s)
        if search is not None:
            timer.add("search", max(search_s - db_s, 0.0))
            timer.add("database", db_s)
        self.metrics.observe_batch(1, forward_s)
        return result

    def _search_batch(
        self, embeddings: np.ndarray, contexts: list[tuple[SearchArgs, str]]
    ) -> list[tuple[list[Hit], float, float]]:
        """The searches of a micro-batch, one FAISS call per distinct set of search arguments (usually one):
        ``(hits, search s, database s)`` per request (the call's time is shared by its requests)."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (args, sha) in enumerate(contexts):
            key = (args.k, tuple(args.labels or ()), args.split, sha if args.exclude_duplicates else None, args.rerank)
            groups.setdefault(key, []).append(i)
        out: list[tuple[list[Hit], float, float]] = [([], 0.0, 0.0)] * len(contexts)
        for (k, labels, split, exclude, rerank), rows in groups.items():
            hits, search_s, db_s = self._timed_search(
                embeddings[rows],
                k,
                labels=list(labels) or None,
                split=split,
                exclude_sha256={exclude} if exclude is not None else None,
                rerank=rerank,
            )
            for row, found in zip(rows, hits, strict=True):
                out[row] = (found, search_s, db_s)
        return out

    def _query_alone(
        self, data: bytes, filename: str, search: SearchArgs | None
    ) -> tuple[QueryResult, float, float, float]:
        """The whole query in the calling worker thread: (result, forward s, search s, database s)."""
        prepared = prepare_image(data, self.spec, self.settings.max_pixels, filename)
        started = time.perf_counter()
        embeddings, logits = self._forward(prepared.array[None])
        forward_s = time.perf_counter() - started
        if search is None:
            return QueryResult(prepared, embeddings[0], logits[0], None), forward_s, 0.0, 0.0
        hits, search_s, db_s = self._timed_search(
            embeddings,
            search.k,
            labels=search.labels or None,
            split=search.split,
            exclude_sha256={prepared.sha256} if search.exclude_duplicates else None,
            rerank=search.rerank,
        )
        return QueryResult(prepared, embeddings[0], logits[0], hits[0] if hits else []), forward_s, search_s, db_s

    async def query_batch(
        self, uploads: list[UploadFile], field_name: str, timer: StageTimer, search: SearchArgs
    ) -> list[QueryResult]:
        """Several query images: decoded, embedded in one forward pass and searched together, in one worker trip."""
        started = time.perf_counter()
        files = [
            (await self.read_upload(u, f"{field_name}[{i}]"), u.filename or f"{field_name}[{i}]")
            for i, u in enumerate(uploads)
        ]
        timer.add("decode", time.perf_counter() - started)
        with self.model.solo():
            results, stages = await self.blocking(self._query_many, files, field_name, search)
        for stage, seconds in stages.items():
            timer.add(stage, seconds)
        self.metrics.observe_batch(len(results), stages["embed"])
        return results

    def _query_many(
        self, files: list[tuple[bytes, str]], field_name: str, search: SearchArgs
    ) -> tuple[list[QueryResult], dict[str, float]]:
        prepared: list[Prepared] = []
        for i, (data, filename) in enumerate(files):
            try:
                prepared.append(prepare_image(data, self.spec, self.settings.max_pixels, filename))
            except ImageDecodeError as exc:
                raise decode_error(exc, f"{field_name}[{i}]") from exc
        started = time.perf_counter()
        embeddings, logits = self._forward(np.stack([p.array for p in prepared]))
        forward_s = time.perf_counter() - started
        exclude = {p.sha256 for p in prepared} if search.exclude_duplicates else None
        hits, search_s, db_s = self._timed_search(
            embeddings,
            search.k,
            labels=search.labels or None,
            split=search.split,
            exclude_sha256=exclude,
            rerank=search.rerank,
        )
        stages = {
            "decode": sum(p.decode_s for p in prepared),
            "preprocess": sum(p.preprocess_s for p in prepared),
            "embed": forward_s,
            "search": max(search_s - db_s, 0.0),
            "database": db_s,
        }
        results = [QueryResult(p, embeddings[i], logits[i], hits[i]) for i, p in enumerate(prepared)]
        return results, stages

    def check_vector(self, values: list[float], field_name: str = "vector") -> np.ndarray:
        """A query embedding: embedding_dim finite numbers, not all zero (422 naming the field otherwise)."""
        dim = int(self.collection.embedder.dim)
        # float64 first: any JSON number the schema allows (1e-300, 1e300) keeps its direction, which a cast to
        # float32 would lose (to 0 or inf) before the vector is normalised.
        vector = np.asarray(values, dtype=np.float64)
        if vector.shape != (dim,):
            raise ApiError(
                422,
                "validation_error",
                f"{field_name}: expected {dim} numbers (the collection's embedding_dim), got {len(values)}",
                details=[{"field": field_name, "message": f"must have {dim} values"}],
            )
        if not np.all(np.isfinite(vector)) or not np.any(vector):
            raise ApiError(
                422,
                "validation_error",
                f"{field_name}: expected finite numbers, not all zero",
                details=[{"field": field_name, "message": "finite and non-zero"}],
            )
        vector = vector / np.abs(vector).max()  # no overflow in the norm below
        return (vector / np.linalg.norm(vector)).astype(np.float32)

    async def embed(self, prepared: Prepared, timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        embedding, logits = await self.model.embed(prepared.array)
        timer.add("embed", time.perf_counter() - started)
        return embedding, logits

    # --- search ----------------------------------------------------------------------------------------------

    async def search(
        self,
        embedding: np.ndarray,
        k: int,
        timer: StageTimer,
        *,
        labels: list[str] | None = None,
        split: str | None = None,
        exclude_ids: set[int] | None = None,
        exclude_sha256: set[str] | None = None,
        rerank: RerankConfig | None = None,
    ) -> list[Hit]:
        hits, seconds, db_seconds = await self.blocking(
            self._timed_search,
            embedding[None].astype(np.float32, copy=False),
            k,
            labels=labels or None,
            split=split,
            exclude_ids=exclude_ids,
            exclude_sha256=exclude_sha256,
            rerank=rerank,
        )
        # Collection.search reads the neighbours' rows itself: its SQL time is the "database" stage.
        timer.add("search", max(seconds - db_seconds, 0.0))
        timer.add("database", db_seconds)
        return hits[0] if hits else []

    def _timed_search(self, *args: Any, **kwargs: Any) -> tuple[list[list[Hit]], float, float]:
        if self.settings.faiss_threads:
            # OpenMP's thread count is a per-thread setting: set it in the thread that searches.
            faiss.omp_set_num_threads(self.settings.faiss_threads)
        return self.db_timer.timed(self.collection.search, *args, **kwargs)

    def observe(self, timer: StageTimer) -> None:
        for stage, ms in timer.stages.items():
            histogram = self._stage_histograms.get(stage)
            if histogram is None:  # looked up once per stage: labels() costs a lock and a hash per call
                histogram = self._stage_histograms.setdefault(stage, self.metrics.stage.labels(stage))
            histogram.observe(ms / 1000.0)

    # --- collection facts ------------------------------------------------------------------------------------

    def index_size(self) -> int:
        return int(self.collection.ntotal)

    def _position(self) -> tuple[int, int]:
        return self.collection.generation, self.collection.seq

    async def stats(self, *, min_age_s: float = STATS_MIN_AGE_S) -> dict[str, Any]:
        """Collection statistics, recomputed when the feed position moved (a write here or elsewhere) and they are
        older than ``min_age_s``, or after STATS_TTL_S."""
        now = time.monotonic()
        cached = self._stats
        moved = cached is not None and cached[1] != self._position() and now - cached[0] >= min_age_s
        # While the follower cannot reach the database, nothing is answered from cached statistics: a request that
        # needs them answers as the database does (503), as the rows' cache does (indexer.row_cache).
        unconfirmed = self.collection.following and self.collection.confirmed_head() is None
        if cached is None or moved or unconfirmed or now - cached[0] > STATS_TTL_S:
            position = self._position()
            cached = (now, position, await self.blocking(self.collection.stats))
            self._stats = cached
        return cached[2]

    def sync_state(self, head: int | None = None) -> SyncState:
        return SyncState(**self.collection.sync_state(head), interval_ms=self.settings.sync_interval_ms)

    def trained_on(self) -> str | None:
        """The folder name of the dataset the checkpoint was trained on, when its metadata records it."""
        root = ((self.collection.embedder.meta.training or {}).get("dataset") or {}).get("root")
        return Path(str(root)).name or None if root else None

    async def predictions_scope(self) -> tuple[PredictionsScope, str | None]:
        """("collection", None) when every class the head can name is a label the collection holds, else
        ("model", why): the head's answers are then the model's own classes, never the collection's."""
        # While the database is down, the last statistics whatever their age (labels rarely change), so that
        # classifying, which needs no database, keeps working.
        try:
            stats = await self.stats()
        except CollectionError:
            if self._stats is None:
                return "model", "the collection's labels cannot be read now (the metadata database is unavailable)"
            stats = self._stats[2]
        labels = set(stats.get("labels", {})) - {UNLABELLED}
        missing = [c for c in self.class_names if c not in labels]
        if not missing:
            return "collection", None
        source = f" (trained on {self.trained_on()})" if self.trained_on() else ""
        held = f"its labels are {', '.join(sorted(labels)[:12])}" if labels else "its images carry no labels"
        return "model", (
            f"the model's {len(self.class_names)} classes{source} are not this collection's labels "
            f"({len(missing)} of them, e.g. {', '.join(missing[:3])}, label no image here; {held}): predictions "
            "name the model's own classes; the neighbours' vote (knn_prediction) answers in the collection's labels"
        )

    async def collection_info(self) -> CollectionInfo:
        stats = await self.stats()
        meta = self.collection.embedder.meta
        labels = dict(stats.get("labels", {}))
        scope, note = await self.predictions_scope()
        return CollectionInfo(
            model=meta.model_name,
            checkpoint_sha256=meta.weights_sha256,
            classes=self.class_names,
            class_descriptions=dict(meta.class_descriptions),
            predictions_scope=scope,
            predictions_note=note,
            trained_on=self.trained_on(),
            label_names=sorted(set(labels) - {UNLABELLED}),
            multi_label=self.multi_label,
            embedding_dim=int(meta.embedding_dim),
            index_type=str(self.collection.index_type),
            size=int(stats.get("rows", self.index_size())),
            image_size=list(self.spec.image_size),
            splits=dict(stats.get("splits", {})),
            labels=labels,
            max_k=self.settings.max_k,
            default_k=self.settings.default_k,
            max_upload_bytes=self.settings.max_upload_bytes,
            writes_enabled=self.settings.api_key is not None,
            sync=self.sync_state(),
        )

    def forget_stats(self) -> None:
        self._stats = None

    async def check_labels(self, values: list[str] | None, field_name: str = "label") -> list[str] | None:
        """Filter labels from repeated and/or ``|``-separated values: any label stored in the collection; 422
        naming the known ones for a label no image carries."""
        if not values:
            return None
        labels = split_labels(values)
        # Known labels are taken from the cached statistics whatever their age (a search never waits for a scan
        # because the collection changed); an unknown one is looked up again if the collection moved since.
        known = set((await self.stats(min_age_s=float("inf"))).get("labels", {})) - {UNLABELLED}
        if any(v not in known for v in labels):
            known = set((await self.stats(min_age_s=0.0)).get("labels", {})) - {UNLABELLED}
        unknown = [v for v in labels if v not in known]
        if unknown:
            raise ApiError(
                422,
                "unknown_label",
                f"{field_name}: no image in the collection carries label(s) {unknown}; the collection's labels are "
                f"{sorted(known)}",
                details=[{"field": field_name, "message": f"unknown label {v!r}"} for v in unknown],
            )
        return labels or None

    # --- shaping ---------------------------------------------------------------------------------------------

    def neighbours(self, hits: list[Hit], *, cosine: bool = True) -> list[Neighbour]:
        """Hits as API neighbours, with the calibrated same-class probability when a calibration exists and the
        scores are cosines (``cosine=False`` after re-ranking, whose scores the calibration was not fitted on)."""
        if self.calibration is None or not cosine or not hits:
            return [neighbour(h) for h in hits]
        probabilities = self.calibration([h.score for h in hits])
        return [neighbour(h, round(float(p), 6)) for h, p in zip(hits, probabilities, strict=True)]

    def predictions(self, logits: np.ndarray, top: int = 5) -> list[ClassScore]:
        # Multi-label answers list every label (each is a separate yes/no); single-label ones the `top` classes.
        scores = top_classes(
            logits, self.class_names, multi_label=self.multi_label, top=None if self.multi_label else top
        )
        return [ClassScore(label=name, probability=round(p, 6)) for name, p in scores]

    def answer_without_image(
        self, k: int, hits: list[Hit], timer: StageTimer, query: ImageInfo | None = None
    ) -> SearchResponse:
        """The answer to a search whose query is no uploaded image (a vector, a stored image, examples): the
        neighbours and their vote; no classifier predictions, since no image went through the model."""
        self.observe(timer)
        return SearchResponse(
            k=k,
            query=query,
            neighbours=self.neighbours(hits),
            predictions=None,
            multi_label=self.multi_label,
            knn_prediction=self.knn(hits),
            timings=Timings(**timer.as_dict()),
        )

    def knn(self, hits: list[Hit]) -> KnnPrediction | None:
        """Similarity-weighted vote of the neighbours over every label they carry (the collection's labels, not
        only the checkpoint's classes): :func:`indexer.predict.knn_vote`."""
        vote = knn_vote(hits, self.class_names, self.multi_label)
        if vote is None:
            return None
        distribution = [ClassScore(label=c, probability=round(p, 6)) for c, p in vote.distribution]
        return KnnPrediction(labels=vote.labels, distribution=distribution, neighbours_used=vote.used)
