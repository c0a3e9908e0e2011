"""The one configuration of the service: environment variables ``MSIR_*`` (or a ``.env`` file).

Every field carries a description: the docs and ``.env.example`` are generated from this class, so it is the
single place where a setting is explained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from msir_core.retrieval.duplicate_threshold import DEFAULT_THRESHOLD

MB = 1024 * 1024


class Settings(BaseSettings):
    """Settings of ``msir-serve`` (read from ``MSIR_<FIELD>`` environment variables and ``.env``)."""

    model_config = SettingsConfigDict(
        env_prefix="MSIR_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    collection_dir: Path = Field(
        Path("var/collection"),
        description="Directory of the collection to serve (manifest.json + index.faiss, built with msir-index).",
        examples=["var/demo/collection"],
    )
    checkpoint: Path | None = Field(
        None,
        description=(
            "Model checkpoint (NAME.safetensors + NAME.json). Unset: the checkpoint recorded in the collection "
            "manifest. A different checkpoint than the one the index was built with is refused."
        ),
        examples=["runs/cifar10/best.safetensors"],
    )
    database_url: SecretStr | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the metadata database, e.g. postgresql+psycopg://msir@db/msir (kept secret: it may "
            "hold a password). Unset: the database recorded in the collection manifest, by default the "
            "collection's own SQLite file (metadata.db in collection_dir)."
        ),
        examples=["postgresql+psycopg://msir@127.0.0.1:5432/msir"],
    )
    milvus_uri: str | None = Field(
        None,
        description=(
            "Collections on the milvus backend: the Milvus URI to use instead of the one recorded in the manifest, "
            "e.g. http://milvus:19530 when the service reaches Milvus under another host name than the indexer "
            "did. Unset: the recorded URI (by default the milvus-lite file milvus.db in collection_dir). Ignored "
            "for faiss collections."
        ),
        examples=["http://127.0.0.1:19530"],
    )
    milvus_token: SecretStr | None = Field(
        None,
        description="Token of the Milvus server (user:password or an API key); never written to the manifest.",
    )
    index_mmap: bool = Field(
        False,
        description=(
            "FAISS collections: open the saved index memory-mapped instead of reading it into memory. The vectors "
            "(flat: all of the index; hnsw: the vectors, not the graph; ivfpq: the exact store, not the IVF-PQ "
            "codes) are mapped read-only, so the server is ready without reading the file and replicas on one host "
            "share its pages; the first write (a followed add, a flat/ivfpq removal) copies them into memory."
        ),
    )
    api_key: SecretStr | None = Field(
        None,
        description=(
            "API key for the write endpoints (POST/DELETE /v1/images), sent as 'X-API-Key: KEY' or "
            "'Authorization: Bearer KEY'. There is no default key: unset, every write is refused with 403."
        ),
    )
    read_requires_key: bool = Field(
        False,
        description="Require the API key on the read endpoints too (search, classify, images, collection).",
    )
    max_upload_bytes: int = Field(
        20 * MB,
        gt=0,
        description=(
            "Largest request body accepted, in bytes (all files and form fields of one request together). "
            "Checked against Content-Length before reading and counted while streaming: 413 beyond it."
        ),
    )
    max_pixels: int = Field(
        40_000_000,
        gt=0,
        description="Largest image accepted, in pixels (width x height), read from the header before decoding.",
    )
    max_metadata_bytes: int = Field(
        16 * 1024,
        gt=0,
        description="Largest 'metadata' form field accepted on upload, in bytes of JSON text: 422 beyond it.",
    )
    max_metadata_depth: int = Field(
        8,
        ge=1,
        le=32,
        description=(
            "Deepest nesting of objects and lists accepted in upload metadata (a top-level object is 1): 422 "
            "beyond it. Stored rows deeper than 32 levels (written by other tools) are served clipped."
        ),
    )
    max_metadata_keys: int = Field(
        256, ge=1, description="Most object keys (at every level together) accepted in upload metadata: 422 beyond."
    )
    max_k: int = Field(100, ge=1, description="Largest number of neighbours a client may ask for (k).")
    default_k: int = Field(10, ge=1, description="Number of neighbours returned when the request gives no k.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Origins allowed to call the API from a browser (CORS), comma-separated or a JSON list, e.g. "
            "'https://a.example,https://b.example'. Empty: no CORS headers (same-origin UI only)."
        ),
    )
    host: str = Field("127.0.0.1", description="Interface msir-serve listens on (0.0.0.0 for all).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port msir-serve listens on.")
    workers: int = Field(
        1,
        ge=1,
        description=(
            "Server processes. Each loads its own copy of the model and index and follows the collection's change "
            "feed (MSIR_SYNC_INTERVAL_MS), so a write through one is visible in all; /metrics reports per process. "
            "On CPU one process with micro-batching is usually best."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs: auto (CUDA when available), cpu or cuda."
    )
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description=(
            "What runs the model. auto: ONNX Runtime when the model runs on the CPU, onnxruntime is installed and the "
            "checkpoint's export (NAME.onnx + NAME.onnx.json) verifies, else eager PyTorch with the reason logged "
            "once. onnx: ONNX Runtime, and a startup error when it cannot run. torch: eager PyTorch. A missing or "
            "stale export (other weights sha256, changed graph, outputs that differ from PyTorch) is made again at "
            "startup, beside the checkpoint when that folder is writable, else in collection_dir."
        ),
    )
    batch_max_size: int = Field(
        16,
        ge=1,
        description=(
            "Micro-batching: concurrent embedding requests are coalesced into one forward pass of at most this "
            "many images. 1 turns micro-batching off (one forward pass per request)."
        ),
    )
    batch_max_wait_ms: float = Field(
        2.0,
        ge=0,
        description=(
            "Micro-batching: how long the first request of a batch waits for others to join, in milliseconds. "
            "0 still coalesces the requests already waiting while the previous batch ran."
        ),
    )
    torch_threads: int = Field(
        1,
        ge=0,
        description=(
            "Threads one forward pass may use (torch.set_num_threads); 0: torch's default (one per core). The "
            "service runs requests side by side, so 1 is the default: measured on 2 CPU cores "
            "(results/benchmarks/serve_latency_threads_cpu.md), more threads made each pass several times slower. "
            "Raise it on a dedicated many-core host serving large batches."
        ),
    )
    faiss_threads: int = Field(
        1,
        ge=0,
        description=(
            "OpenMP threads one FAISS search may use; 0: FAISS's default (one per core). A single query gains "
            "nothing from more while other requests run (measured: a flat search of 50,000 vectors took ~1 ms with "
            "1 thread and ~35 ms with 2 on a busy 2-core CPU)."
        ),
    )
    malloc_mmap_threshold_mb: int = Field(
        32,
        ge=0,
        le=32,
        description=(
            "glibc malloc: blocks up to this many MiB come from the heap, and freed heap memory stays with the "
            "process, so a forward pass does not pay page faults for its activation buffers again (measured: one "
            "image through the demo model 10.5-11 ms -> 4.8 ms). 0: glibc's defaults (memory freed after a peak "
            "goes back to the OS). Linux with glibc only."
        ),
    )
    blocking_threads: int = Field(
        8,
        ge=1,
        description="Threads for blocking work (image decoding, index search, database, file reads).",
    )
    thumbnail_size: int = Field(
        192, ge=16, le=1024, description="Longest side of the thumbnails served by /v1/images/{id}/thumbnail."
    )
    thumbnail_cache_dir: Path | None = Field(
        None,
        description="Where thumbnails are cached (keyed by image sha256). Unset: collection_dir/thumbnails.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info",
        description="Logging level of the service and uvicorn; debug also shows library start-up messages (FAISS "
        "instruction-set fallbacks, alembic migration context).",
    )
    access_log: bool = Field(True, description="Log one line per request (uvicorn access log).")
    graceful_timeout_s: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM/SIGINT, how long in-flight requests may take to finish before the server exits.",
    )
    sync_interval_ms: int = Field(
        500,
        ge=0,
        le=60_000,
        description=(
            "How often the server checks the collection's change feed (one SELECT max(seq)) and applies what "
            "other processes (msir-index, other workers and replicas) committed: a write anywhere is visible to "
            "searches here within about this bound. 0 turns following off (the index then changes only with this "
            "process's own writes)."
        ),
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Slow clients: a request's line and headers must arrive within this many seconds of the connection "
            "opening (or of the request's first byte on a kept-alive connection); otherwise 408 and the connection "
            "is closed."
        ),
    )
    max_header_bytes: int = Field(
        65_536, ge=1024, description="Largest request line + headers accepted, in bytes: 431 and close beyond it."
    )
    body_grace_s: float = Field(
        10.0,
        ge=0,
        description="Slow clients: seconds a request body may take before MSIR_MIN_BODY_RATE is enforced.",
    )
    min_body_rate: int = Field(
        4096,
        gt=0,
        description=(
            "Slow clients: after MSIR_BODY_GRACE_S, a request body must arrive at this many bytes per second on "
            "average, or 408 and the connection is closed."
        ),
    )
    max_connections: int = Field(
        512,
        ge=1,
        description=(
            "Open connections per server process; a connection beyond it is answered 503 + Retry-After and closed."
        ),
    )
    max_in_flight: int = Field(
        16,
        ge=1,
        description=(
            "Overload: API requests (/v1/...) handled at once per process. More wait in a bounded queue "
            "(MSIR_MAX_QUEUED, MSIR_QUEUE_TIMEOUT_S); beyond it they are answered 503 + Retry-After at once. "
            "Measured with benchmarks/overload.py."
        ),
    )
    max_queued: int = Field(
        32, ge=0, description="Overload: API requests that may wait for a slot; one more is answered 503 at once."
    )
    queue_timeout_s: float = Field(
        0.25,
        ge=0,
        description="Overload: longest wait for a slot, in seconds, before a queued request is answered 503.",
    )
    max_per_client: int | None = Field(
        None,
        ge=0,
        description=(
            "Overload: API requests one client address may have in progress (running or queued) at once; one more "
            "is answered 429 + Retry-After. Unset: half of MSIR_MAX_IN_FLIGHT + MSIR_MAX_QUEUED; 0: no cap."
        ),
    )
    retry_after_s: int = Field(
        5,
        ge=1,
        description=(
            "Retry-After (seconds) sent with 503 answers: database unreachable, overload, too many connections."
        ),
    )
    duplicate_threshold: float = Field(
        DEFAULT_THRESHOLD,
        gt=0,
        le=1,
        description=(
            "Near-duplicates (GET /v1/duplicates, collapse_duplicates on search): two images are duplicates when the "
            "cosine of their copy descriptors (models/copy_descriptor.py, computed from pixels, whatever the model) "
            "is at least this. The default is the threshold benchmarks/duplicates.py calibrated on copies of CIFAR-10 "
            "test images (results/benchmarks/duplicates.json)."
        ),
    )
    map_max_points: int = Field(
        5000,
        ge=10,
        le=100_000,
        description=(
            "GET /v1/map: at most this many images are projected and returned; a larger collection is sampled "
            "uniformly at random (a fixed seed, so the sample is the same until the collection changes)."
        ),
    )

    @property
    def per_client_cap(self) -> int:
        """MSIR_MAX_PER_CLIENT resolved: unset means half of the slots and queue places (0: no cap)."""
        if self.max_per_client is not None:
            return self.max_per_client
        return max(1, (self.max_in_flight + self.max_queued) // 2)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_key")
    @classmethod
    def _non_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty MSIR_API_KEY= line would otherwise be a key that anyone can send.
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @model_validator(mode="after")
    def _check_k(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self

    @property
    def batching_enabled(self) -> bool:
        return self.batch_max_size > 1

    def resolved_thumbnail_dir(self) -> Path:
        return self.thumbnail_cache_dir or self.collection_dir / "thumbnails"
