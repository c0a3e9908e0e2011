"""The Milvus backend of :mod:`indexer.vectors.backends`: a Milvus collection reached with pymilvus.

URIs: a ``.db`` file runs milvus-lite inside this process (development, tests; default ``<dir>/milvus.db``);
``http(s)://host:19530`` reaches a Milvus standalone or cluster (the token comes from ``MSIR_MILVUS_TOKEN`` /
``--milvus-token``, never from the manifest).

One Milvus collection per generation of the index, named ``msir_<collection id>_<random>``: a rebuild fills a new
one beside the one being served and swaps; ``index.milvus.json`` beside the manifest names the current one (the
counterpart of ``index.faiss``), written atomically on every save. The superseded collection is dropped once its
successor is saved. Each entity holds the database id (primary key), the vector and copies of the row's
``labels``, ``split`` and ``sha256``, so filters run inside Milvus (:meth:`MilvusStore.refresh` copies them again
when the database changes them).

Index types map to Milvus's: ``flat`` -> FLAT, ``hnsw`` -> HNSW (``M``, ``ef_construction``, ``ef_search``),
``ivfpq`` -> IVF_PQ (``nlist``, ``m``, ``nbits``, ``nprobe``; Milvus standalone only: milvus-lite has no IVF_PQ).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import CollectionError
from indexer.vectors.faiss_index import default_m, resolve_options
from indexer.vectors.interface import BackendConfig, StoreSite, VectorStore
from msir_core.atomic import atomic_write_text

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from indexer.manifest import IndexSpec
    from indexer.search import Filters, GetMany

logger = logging.getLogger(__name__)

POINTER_FILE = "index.milvus.json"
LITE_FILE = "milvus.db"
TOPK_LIMIT = 16_384  # Milvus's largest limit (and offset + limit) of one search or query
ID_RANGE = 16_384  # ids read per query by ids(): a range of ids holds at most this many rows
INSERT_BATCH = 2_000
MAX_LABELS = 1_024  # labels per image a Milvus entity can hold (ARRAY max_capacity)
MAX_TEXT = 1_024  # longest label / split, in bytes (VARCHAR max_length)
NO_SPLIT = ""  # the split field of a row without one (see MilvusStore.add)
DEFAULT_NLIST = 1_024  # ivfpq on Milvus: the index is trained per segment by Milvus, not on the whole collection

# milvus-lite serves a .db file from a server thread of this process and holds the file's lock until released:
# count the stores using each file and release it when the last one closes, so another process may open it.
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


def is_lite(uri: str) -> bool:
    return uri.endswith(".db")


def resolve_uri(recorded: str | None, directory: Path, override: str | None = None) -> str:
    """The URI to connect to: the override (service / CLI), the manifest's, or ``<dir>/milvus.db``."""
    uri = override or recorded or str(directory / LITE_FILE)
    if is_lite(uri):
        return str(Path(uri).expanduser().resolve())
    if not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        raise CollectionError(f"Milvus URI {uri!r}: expected a milvus-lite file ending in .db or http(s)://host:19530")
    if "@" in uri.split("//", 1)[-1].split("/", 1)[0]:
        raise CollectionError(
            "Milvus URI: credentials in the URI would be written to manifest.json; give the token with "
            "--milvus-token or MSIR_MILVUS_TOKEN instead"
        )
    return uri


def recorded_uri(uri: str | None, directory: Path) -> str | None:
    """What the manifest keeps: None for the default ``<dir>/milvus.db`` (so the folder can move), else the URI."""
    if uri is None:
        return None
    resolved = resolve_uri(uri, directory)
    return None if resolved == str((directory / LITE_FILE).resolve()) else resolved


def milvus_params(index_type: str, options: dict[str, Any], dim: int) -> tuple[str, dict[str, Any]]:
    if index_type == "flat":
        return "FLAT", {}
    if index_type == "hnsw":
        return "HNSW", {"M": options["M"], "efConstruction": options["ef_construction"]}
    m = options["m"] or default_m(dim)
    if dim % m:
        raise CollectionError(f"ivfpq option m={m} must divide the embedding dimension {dim}")
    return "IVF_PQ", {"nlist": options["nlist"] or DEFAULT_NLIST, "m": m, "nbits": options["nbits"]}


def _literal(value: str) -> str:
    """A Milvus string literal (double quotes, backslash escapes): filter values are never spliced in raw."""
    return json.dumps(value, ensure_ascii=False)


def filter_expression(filters: Filters | None) -> str:
    """The Milvus boolean expression of a search's filters ('' for none)."""
    if filters is None:
        return ""
    parts = []
    if filters.labels:
        parts.append(f"array_contains_any(labels, [{', '.join(_literal(v) for v in sorted(filters.labels))}])")
    if filters.split is not None:
        # "" would match the rows stored without a split; the database matches none with it.
        parts.append(f"split == {_literal(filters.split)}" if filters.split != NO_SPLIT else "id < 0")
    if filters.exclude_ids:
        parts.append(f"id not in [{', '.join(str(int(i)) for i in sorted(filters.exclude_ids))}]")
    if filters.exclude_sha256:
        parts.append(f"sha256 not in [{', '.join(_literal(v) for v in sorted(filters.exclude_sha256))}]")
    return " and ".join(parts)


def _connect(uri: str, token: str | None) -> MilvusClient:
    try:
        from pymilvus import MilvusClient, MilvusException
    except ImportError as error:  # pragma: no cover - depends on the install
        raise CollectionError(
            "the milvus backend needs pymilvus (and milvus-lite for .db files): pip install 'msir[milvus]'"
        ) from error
    if is_lite(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        with _lite_lock:
            _lite_users[uri] = _lite_users.get(uri, 0) + 1
    try:
        return MilvusClient(uri=uri, token=token or "")
    except MilvusException as error:
        _release(uri)
        raise CollectionError(f"cannot connect to Milvus at {uri}: {error}") from error


def _release(uri: str) -> None:
    if not is_lite(uri):
        return
    with _lite_lock:
        left = _lite_users.get(uri, 1) - 1
        if left > 0:
            _lite_users[uri] = left
            return
        _lite_users.pop(uri, None)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


class MilvusStore:
    """One Milvus collection holding a collection's vectors (see the module docstring)."""

    backend = "milvus"
    filters_pushed_down = True
    device = "milvus"

    def __init__(
        self,
        client: MilvusClient,
        uri: str,
        name: str,
        index_type: str,
        dim: int,
        options: dict[str, Any],
        records: GetMany,
    ) -> None:
        self._client: MilvusClient | None = client
        self.uri = uri
        self.name = name
        self.index_type = index_type
        self.dim = int(dim)
        self.options = resolve_options(index_type, options)
        self._records = records
        self._count = 0

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        spec: IndexSpec,
        dim: int,
        *,
        directory: Path,
        collection_id: str,
        records: GetMany,
        config: BackendConfig,
    ) -> MilvusStore:
        uri = resolve_uri(spec.uri, directory, config.milvus_uri)
        options = resolve_options(spec.type, spec.params)
        index_type, params = milvus_params(spec.type, options, dim)
        if is_lite(uri) and index_type == "IVF_PQ":
            raise CollectionError(
                "milvus-lite has no IVF_PQ index: use --index flat or hnsw with a .db URI, or a Milvus standalone "
                "(http://host:19530) for ivfpq"
            )
        from pymilvus import DataType, MilvusClient, MilvusException

        client = _connect(uri, config.milvus_token)
        name = f"msir_{collection_id}_{uuid.uuid4().hex[:8]}"
        try:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
            schema.add_field("split", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
            schema.add_field(
                "labels", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_LABELS, max_length=MAX_TEXT
            )
            schema.add_field("sha256", DataType.VARCHAR, max_length=64)
            index_params = client.prepare_index_params()
            index_params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=params)
            # Strong consistency: a search right after a write (this process or another) sees it.
            client.create_collection(name, schema=schema, consistency_level="Strong")
            # Not waited for (sync=False): Milvus builds segment indexes in the background, and milvus-lite has no
            # AllocTimestamp, which the wait calls. Loading makes the collection searchable right away.
            client.create_index(name, index_params, sync=False)
            client.load_collection(name)
        except MilvusException as error:
            client.close()
            _release(uri)
            raise CollectionError(f"cannot create Milvus collection {name} at {uri}: {error}") from error
        logger.info("created Milvus collection %s at %s (%s)", name, uri, index_type)
        return cls(client, uri, name, spec.type, dim, options, records)

    @classmethod
    def load(
        cls,
        spec: IndexSpec,
        dim: int,
        *,
        directory: Path,
        collection_id: str,
        records: GetMany,
        config: BackendConfig,
    ) -> MilvusStore:
        pointer = directory / POINTER_FILE
        hint = f"run `msir-index rebuild {directory}` to rebuild it from the database"
        if not pointer.is_file():
            raise CollectionError(f"{pointer}: Milvus index pointer missing; {hint}")
        try:
            name = str(json.loads(pointer.read_text(encoding="utf-8"))["collection"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CollectionError(f"{pointer}: unreadable ({error}); {hint}") from error
        if not name.startswith(f"msir_{collection_id}_"):
            raise CollectionError(f"{pointer}: names Milvus collection {name}, not one of collection {collection_id}")
        from pymilvus import MilvusException

        uri = resolve_uri(spec.uri, directory, config.milvus_uri)
        client = _connect(uri, config.milvus_token)
        store = cls(client, uri, name, spec.type, dim, spec.params, records)
        try:
            if not client.has_collection(name):
                raise CollectionError(f"Milvus collection {name} not found at {uri}; {hint}")
            fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
            found = int(fields["vector"]["params"]["dim"])
            if found != store.dim:
                raise CollectionError(f"Milvus collection {name} has dimension {found}, expected {store.dim}")
            client.load_collection(name)
            store._count = store._count_rows()
        except (MilvusException, CollectionError, KeyError) as error:
            store.close()
            if isinstance(error, CollectionError):
                raise
            raise CollectionError(f"Milvus collection {name} at {uri}: {error}; {hint}") from error
        return store

    # -- facts --------------------------------------------------------------------------------------------------
    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            raise CollectionError(f"Milvus store {self.name} is closed")
        return self._client

    @property
    def ntotal(self) -> int:
        # Kept in step with every write of this process (another process's writes are synced through add/remove).
        return self._count

    @property
    def trained(self) -> bool:
        return True  # Milvus builds and trains its indexes itself, per segment

    @property
    def supports_remove(self) -> bool:
        return True

    def maybe_train(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.index_type,
            "backend": "milvus",
            "uri": self.uri,
            "milvus_collection": self.name,
            "milvus_index": milvus_params(self.index_type, self.options, self.dim)[0],
            "options": dict(self.options),
            "ntotal": self.ntotal,
            "device": "milvus",
        }

    def wait_indexed(self, timeout_s: float = 600.0) -> bool:
        """Wait until Milvus has indexed every row (it builds segment indexes in the background; searches before
        that scan unindexed segments). True when done within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = self.client.describe_index(self.name, "vector")
            if str(info.get("state")) == "Finished" and int(info.get("pending_index_rows", 0)) == 0:
                return True
            time.sleep(0.5)
        return False

    def _count_rows(self) -> int:
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # -- mutation ---------------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray, *, train: bool = True) -> None:
        """Upsert vectors with the scalar copies of their rows (read from the database: the truth)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(ids) == 0:
            return
        if vectors.shape != (len(ids), self.dim):
            raise CollectionError(f"vectors of shape {vectors.shape} do not match {len(ids)} ids of dim {self.dim}")
        rows = self._records(ids.tolist())
        lost = [int(i) for i in ids if int(i) not in rows]
        if lost:  # deleted between the database read and now: nothing to index
            keep = np.isin(ids, lost, invert=True)
            ids, vectors = ids[keep], vectors[keep]
        for start in range(0, len(ids), INSERT_BATCH):
            batch = []
            for i, vector in zip(ids[start : start + INSERT_BATCH], vectors[start : start + INSERT_BATCH], strict=True):
                record = rows[int(i)]
                batch.append(
                    {
                        "id": int(i),
                        "vector": vector,
                        # No split is stored as "" (no split is ever named ""): servers before Milvus 2.5
                        # (the embedded 2.3.5 standalone) have no nullable fields and refuse a null.
                        "split": record.split or NO_SPLIT,
                        "labels": list(record.labels),
                        "sha256": record.sha256,
                    }
                )
            # Upsert, not insert: Milvus does not enforce unique primary keys, and a retried batch must not repeat.
            self.client.upsert(self.name, batch)
        self._count = self._count_rows()

    def refresh(self, ids: np.ndarray | list[int]) -> None:
        """Copy the rows' labels, split and sha256 again from the database (after they changed there); the vectors
        are Milvus's own. Ids not in the collection are left out."""
        wanted = sorted({int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)})
        for start in range(0, len(wanted), TOPK_LIMIT):
            rows = self.client.get(self.name, ids=wanted[start : start + TOPK_LIMIT], output_fields=["vector"])
            if rows:
                found = np.asarray([int(r["id"]) for r in rows], dtype=np.int64)
                self.add(found, np.stack([np.asarray(r["vector"], dtype=np.float32) for r in rows]))

    def remove(self, ids: np.ndarray | list[int]) -> int:
        wanted = sorted({int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)})
        if not wanted:
            return 0
        present: list[int] = []
        for start in range(0, len(wanted), TOPK_LIMIT):
            part = wanted[start : start + TOPK_LIMIT]
            rows = self.client.query(self.name, filter=f"id in {part}", output_fields=["id"])
            present.extend(int(r["id"]) for r in rows)
        if present:
            self.client.delete(self.name, ids=present)
            self._count = self._count_rows()
        return len(present)

    # -- reading ----------------------------------------------------------------------------------------------
    def ids(self) -> np.ndarray:
        """Every id, sorted: queried by ranges of ids (Milvus answers at most 16,384 rows per query)."""
        total = self._count_rows()
        found: list[int] = []
        low = 0
        while len(found) < total:
            rows = self.client.query(self.name, filter=f"id >= {low} and id < {low + ID_RANGE}", output_fields=["id"])
            found.extend(int(r["id"]) for r in rows)
            low += ID_RANGE
            if low > 2**62:  # pragma: no cover - only negative ids could get here, and ids are positive
                break
        return np.sort(np.asarray(found, dtype=np.int64))

    def ann_ids(self) -> np.ndarray:
        return self.ids()

    def reconstruct(self, ids: np.ndarray | list[int]) -> np.ndarray:
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        got: dict[int, np.ndarray] = {}
        for start in range(0, len(wanted), TOPK_LIMIT):
            for row in self.client.get(self.name, ids=wanted[start : start + TOPK_LIMIT], output_fields=["vector"]):
                got[int(row["id"])] = np.asarray(row["vector"], dtype=np.float32)
        missing = [i for i in wanted if i not in got]
        if missing:
            raise CollectionError(f"Milvus collection {self.name} holds no vector for ids {missing[:10]}")
        return np.stack([got[i] for i in wanted]) if wanted else np.zeros((0, self.dim), np.float32)

    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], ids [Q, k])`` best first, only rows passing ``filters``; missing: id -1, -inf."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise CollectionError(f"queries have dimension {queries.shape[1]}, the index holds {self.dim}")
        k = max(1, min(int(k), TOPK_LIMIT))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if self._count == 0:
            return scores, ids
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.index_type == "hnsw":
            params["params"] = {"ef": max(self.options["ef_search"], k)}
        elif self.index_type == "ivfpq":
            nlist = self.options["nlist"] or DEFAULT_NLIST
            params["params"] = {"nprobe": min(nlist, self.options["nprobe"] or max(32, nlist // 8))}
        results = self.client.search(
            self.name,
            data=list(queries),
            limit=k,
            filter=filter_expression(filters),
            output_fields=["id"],
            search_params=params,
            anns_field="vector",
        )
        for row, hits in enumerate(results):
            for col, hit in enumerate(hits[:k]):
                ids[row, col] = int(hit["id"])
                scores[row, col] = float(hit["distance"])
        return scores, ids

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Flush (the data is Milvus's own) and point ``index.milvus.json`` at this collection, atomically."""
        self.client.flush(self.name)
        body = {"collection": self.name, "index": milvus_params(self.index_type, self.options, self.dim)[0]}
        atomic_write_text(directory / POINTER_FILE, json.dumps(body, indent=2) + "\n")

    def discard(self) -> None:
        """Drop this collection (replaced by a rebuild whose result is saved) and disconnect."""
        try:
            self.client.drop_collection(self.name)
            logger.info("dropped superseded Milvus collection %s", self.name)
        finally:
            self.close()

    def close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            client.close()
        finally:
            _release(self.uri)


class MilvusBackend:
    name = "milvus"
    own_files = (POINTER_FILE,)

    def create(self, spec: IndexSpec, dim: int, site: StoreSite) -> VectorStore:
        return MilvusStore.create(spec, dim, directory=site.directory, collection_id=site.collection_id,
                                  records=site.records, config=site.config)  # fmt: skip

    def load(self, spec: IndexSpec, dim: int, site: StoreSite) -> VectorStore:
        return MilvusStore.load(spec, dim, directory=site.directory, collection_id=site.collection_id,
                                records=site.records, config=site.config)  # fmt: skip

    def recorded_uri(self, config: BackendConfig, directory: Path) -> str | None:
        return recorded_uri(config.milvus_uri, directory)


BACKEND = MilvusBackend()
