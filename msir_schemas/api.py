"""Request and response models of the /v1 API (their examples feed the OpenAPI document at /docs).

The Python client (``msir_client``) parses answers with these very classes, so this module imports pydantic and
nothing heavier: no FastAPI, torch or database code (``tests/client/test_imports.py`` checks it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code.", examples=["validation_error"])
    message: str = Field(
        description="What was wrong, naming the field or value.", examples=["form field 'image': required"]
    )
    details: Any | None = Field(None, description="Per-field problems for validation errors.")


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: ErrorDetail


class Timings(BaseModel):
    """Milliseconds spent per stage of this request (stages that did not run are 0)."""

    decode: float = Field(0.0, description="Reading the upload and decoding the image.", examples=[1.8])
    preprocess: float = Field(0.0, description="Mode conversion and resizing to the model input.", examples=[0.3])
    embed: float = Field(0.0, description="Model forward pass, including the micro-batch wait.", examples=[4.1])
    search: float = Field(0.0, description="Nearest-neighbour search in the FAISS index.", examples=[0.9])
    database: float = Field(0.0, description="Reading the neighbours' metadata rows.", examples=[1.2])
    total: float = Field(0.0, description="Whole request as seen by the handler.", examples=[8.6])


# What the classifier head's predictions name: "collection" when every class the checkpoint knows is a label the
# collection holds (the head answers in the collection's terms); "model" when it is not (a model trained on other
# data: its classes are the model's own, and the kNN vote over the collection's labels is the answer to read).
PredictionsScope = Literal["collection", "model"]
SCOPE_DESCRIPTION = (
    "'collection': the predictions name labels this collection holds. 'model': the checkpoint's classes are not the "
    "collection's labels, so the predictions name the model's own classes (GET /v1/collection, predictions_note, "
    "says why); read knn_prediction, the vote over the collection's labels, instead."
)


class ClassScore(BaseModel):
    label: str = Field(examples=["cat"])
    probability: float = Field(
        description="Softmax probability (single-label) or sigmoid (multi-label).", examples=[0.83]
    )


class KnnPrediction(BaseModel):
    """Vote of the neighbours' labels (training.evaluation.knn_predict)."""

    labels: list[str] = Field(
        description="Winning class (single-label) or labels carried by at least half (multi-label).",
        examples=[["cat"]],
    )
    distribution: list[ClassScore] = Field(description="Share of the valid neighbours voting for each class.")
    neighbours_used: int = Field(description="Neighbours with a known label that took part in the vote.")


class Neighbour(BaseModel):
    id: int = Field(examples=[4217])
    score: float = Field(description="Cosine similarity (higher is more similar).", examples=[0.93])
    labels: list[str] = Field(examples=[["cat"]])
    split: str | None = Field(examples=["train"])
    metadata: dict[str, Any] = Field(default_factory=dict, examples=[{"photographer": "ann"}])
    image_url: str = Field(examples=["/v1/images/4217"])
    thumbnail_url: str = Field(examples=["/v1/images/4217/thumbnail"])
    same_class_probability: float | None = Field(
        None,
        description="Calibrated probability that this result shares the query's class (isotonic fit on held-out "
        "data, NAME.calibration.json beside the checkpoint); null without a calibration or with re-ranking.",
        examples=[0.91],
    )


class ImageInfo(BaseModel):
    """One stored image (no file system path: files are only reachable through image_url)."""

    id: int = Field(examples=[4217])
    labels: list[str] = Field(examples=[["cat"]])
    split: str | None = Field(examples=["train"])
    width: int | None = Field(examples=[32])
    height: int | None = Field(examples=[32])
    sha256: str = Field(examples=["9f2c…"])
    source: str = Field(examples=["upload"])
    added_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    image_url: str = Field(examples=["/v1/images/4217"])
    thumbnail_url: str = Field(examples=["/v1/images/4217/thumbnail"])


class SearchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "k": 2,
                    "neighbours": [
                        {
                            "id": 12,
                            "score": 0.97,
                            "labels": ["cat"],
                            "split": "train",
                            "metadata": {},
                            "image_url": "/v1/images/12",
                            "thumbnail_url": "/v1/images/12/thumbnail",
                        }
                    ],
                    "predictions": [{"label": "cat", "probability": 0.81}],
                    "knn_prediction": {
                        "labels": ["cat"],
                        "distribution": [{"label": "cat", "probability": 1.0}],
                        "neighbours_used": 1,
                    },
                    "timings": {"decode": 1.1, "preprocess": 0.2, "embed": 3.0, "search": 0.4, "database": 0.9},
                }
            ]
        }
    )

    k: int = Field(description="Number of neighbours asked for (fewer come back when filters leave fewer).")
    query: ImageInfo | None = Field(None, description="The stored image searched from (neighbours endpoint).")
    neighbours: list[Neighbour]
    predictions: list[ClassScore] | None = Field(
        None, description="Classifier head on the query; null when the query is a stored image."
    )
    predictions_scope: PredictionsScope = Field("collection", description=SCOPE_DESCRIPTION)
    multi_label: bool = False
    knn_prediction: KnnPrediction | None = Field(None, description="Vote of the neighbours; null without any.")
    timings: Timings


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "predictions": [{"label": "cat", "probability": 0.81}, {"label": "dog", "probability": 0.12}],
                    "multi_label": False,
                    "timings": {"decode": 1.0, "preprocess": 0.2, "embed": 2.9},
                }
            ]
        }
    )

    predictions: list[ClassScore]
    predictions_scope: PredictionsScope = Field("collection", description=SCOPE_DESCRIPTION)
    multi_label: bool
    timings: Timings


def _integral(value: Any) -> Any:
    """JSON Schema's integer: 5 and 5.0, not "5" or true (a strict model refuses 5.0, a lax one "5")."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class VectorSearchRequest(BaseModel):
    """Body of POST /v1/search/vector: neighbours of an embedding given directly."""

    # strict: "5" is not a k, true not a number (what the schema says, the server enforces).
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"vector": [0.12, -0.03, 0.5], "k": 5, "split": "train"}]},
    )

    vector: list[float] = Field(
        min_length=1,
        max_length=65536,
        description="The query embedding: embedding_dim numbers (see /v1/collection); L2-normalised by the server.",
    )
    k: Annotated[int, BeforeValidator(_integral)] | None = Field(
        None, description="Neighbours to return (1..MSIR_MAX_K; default MSIR_DEFAULT_K)."
    )
    labels: list[str] | None = Field(None, max_length=256, description="Only neighbours carrying one of these.")
    split: str | None = Field(None, max_length=64, description="Only neighbours from this split.")
    min_score: float | None = Field(
        None, ge=-1.0, le=1.0, description="Drop results scoring below this (-1..1, the cosine's range)."
    )


class BatchSearchResult(BaseModel):
    filename: str = Field(description="Name of the uploaded file (the form field's filename).", examples=["q1.jpg"])
    neighbours: list[Neighbour]
    predictions: list[ClassScore]
    knn_prediction: KnnPrediction | None = None


class BatchSearchResponse(BaseModel):
    """POST /v1/search/batch: one result per query image, in upload order; one forward pass for all of them."""

    k: int
    multi_label: bool = False
    predictions_scope: PredictionsScope = Field("collection", description=SCOPE_DESCRIPTION)
    results: list[BatchSearchResult]
    timings: Timings


class ImagePage(BaseModel):
    """GET /v1/images: one page of the collection's images in id order (keyset pagination)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"images": [], "total": 1000, "limit": 50, "next_cursor": "eyJ2IjoxLCJpZCI6NTB9", "next_after": 50}
            ]
        }
    )

    images: list[ImageInfo]
    total: int = Field(description="Images matching the filters (all pages).")
    limit: int = Field(description="Page size asked for.")
    next_cursor: str | None = Field(
        None,
        description="Pass as 'cursor' (unchanged, with the same filters) to get the next page; null on the last page.",
        examples=["eyJ2IjoxLCJpZCI6NTB9"],
    )
    next_after: int | None = Field(
        description="Deprecated (use next_cursor): pass as 'after' to get the next page; null on the last page.",
        examples=[50],
        json_schema_extra={"deprecated": True},
    )


class AddedImage(BaseModel):
    filename: str = Field(examples=["cat.png"])
    id: int = Field(examples=[50001])


class DuplicateImage(BaseModel):
    filename: str = Field(examples=["cat-again.png"])
    existing_id: int = Field(description="Id of the stored image with the same content.", examples=[50001])


class FailedImage(BaseModel):
    filename: str = Field(examples=["notes.txt"])
    reason: str = Field(examples=["not an image format Pillow can decode"])


class AddImagesResponse(BaseModel):
    added: list[AddedImage]
    duplicates: list[DuplicateImage]
    failures: list[FailedImage]


# What _check_label accepts, stated in the schema too: 1-200 characters, not only blanks, no '|'.
# "Not blank" spelled out so that Python's re and JSON Schema's ECMA-262 regex agree: Python's \s also matches
# \x1c-\x1f and \x85, ECMA-262's also matches \ufeff; a label needs one character that is none of them.
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^|]*[^|\s\x1c-\x1f\x85\ufeff][^|]*$")
]


def _check_label(value: str) -> str:
    text = value.strip()
    if not text or "|" in text or len(text) > 200:
        raise ValueError(f"label {value!r}: expected 1-200 characters without '|' (which separates labels)")
    return text


class ImageEdit(BaseModel):
    """A change to a stored image's labels and/or metadata (its embedding is untouched)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"labels": ["ship"], "metadata": {"reviewed": True}}]},
    )

    labels: list[Label] | None = Field(None, description="Replace the image's labels with these.")
    add_labels: list[Label] = Field(default_factory=list, description="Labels to add (kept once).")
    remove_labels: list[Label] = Field(default_factory=list, description="Labels to remove.")
    metadata: dict[str, Any] | None = Field(None, description="Metadata keys to set (merged into the stored object).")
    replace_metadata: bool = Field(False, description="Replace the stored metadata object instead of merging.")

    @field_validator("labels", "add_labels", "remove_labels")
    @classmethod
    def _labels(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else list(dict.fromkeys(_check_label(v) for v in values))

    def is_empty(self) -> bool:
        """Nothing to change: as a JSON merge patch ``{}``, a no-op that answers with the image as it is."""
        return self.labels is None and not self.add_labels and not self.remove_labels and self.metadata is None


class SyncState(BaseModel):
    """Where this server's index copy stands in the collection's change feed."""

    generation: int = Field(description="Index generation (a rebuild by any process starts a new one).")
    seq: int = Field(description="Change-feed position the served index reflects.")
    head: int = Field(description="Newest change in the database at the last check.")
    lag: int = Field(description="Changes committed but not yet applied here (head - seq).")
    following: bool = Field(description="Whether this server follows the feed (MSIR_SYNC_INTERVAL_MS > 0).")
    interval_ms: int = Field(description="Check interval: the staleness bound of searches.")
    last_check_age_s: float | None = Field(None, description="Seconds since the last successful check.")
    error: str | None = Field(None, description="Why the last check failed, when it did.")


class CollectionInfo(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "mscfnet2",
                    "classes": ["airplane", "automobile"],
                    "multi_label": False,
                    "embedding_dim": 128,
                    "index_type": "flat",
                    "size": 50000,
                    "image_size": [32, 32],
                    "splits": {"train": 50000},
                    "labels": {"airplane": 5000},
                }
            ]
        },
    )

    model: str
    checkpoint_sha256: str = Field(description="sha256 of the checkpoint weights.")
    classes: list[str] = Field(description="The checkpoint's classes: what predictions (the classifier head) name.")
    class_descriptions: dict[str, str] = Field(
        default_factory=dict,
        description="Full names of the checkpoint's classes where the names are codes (ISIC: MEL = melanoma).",
    )
    label_names: list[str] = Field(
        default_factory=list,
        description="The collection's labels (every label stored on an image): what filters and the kNN vote use.",
    )
    predictions_scope: PredictionsScope = Field("collection", description=SCOPE_DESCRIPTION)
    predictions_note: str | None = Field(
        None, description="Why the predictions name the model's own classes (predictions_scope 'model'); else null."
    )
    trained_on: str | None = Field(
        None, description="The dataset the checkpoint was trained on (its folder name), when the checkpoint says."
    )
    multi_label: bool
    embedding_dim: int
    index_type: str
    sync: SyncState | None = Field(None, description="Generation, feed position and lag of the served index.")
    size: int = Field(description="Images in the collection.")
    image_size: list[int]
    splits: dict[str, int] = Field(default_factory=dict, description="Images per split, when known.")
    labels: dict[str, int] = Field(default_factory=dict, description="Images per label, when known.")
    max_k: int
    default_k: int
    max_upload_bytes: int
    writes_enabled: bool = Field(description="Whether an API key is configured (POST/DELETE /v1/images).")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(
        examples=[{"model": "ok", "index": "ok (50000 vectors)", "database": "ok"}],
    )
    sync: SyncState | None = None


class DuplicateMember(BaseModel):
    """One image of a near-duplicate group."""

    id: int = Field(examples=[4217])
    score: float = Field(description="Cosine similarity to the group's representative (1 for itself).", examples=[0.97])
    identical: bool = Field(
        description="Copy descriptor equal to the representative's (cosine 1 within 1e-6): the same picture at the "
        "descriptor's 32x32 resolution (the same pixels in another file, say)."
    )
    labels: list[str] = Field(examples=[["cat"]])
    split: str | None = Field(examples=["train"])
    image_url: str = Field(examples=["/v1/images/4217"])
    thumbnail_url: str = Field(examples=["/v1/images/4217/thumbnail"])


class DuplicateGroup(BaseModel):
    representative: int = Field(description="The group's smallest id (its oldest image), listed first.", examples=[12])
    size: int = Field(examples=[3])
    members: list[DuplicateMember]


class DuplicatePage(BaseModel):
    """Near-duplicate groups, largest first: images whose copy descriptors (computed from the pixels) have a cosine
    >= threshold, joined transitively. Images with exactly the same bytes are never stored twice (an add reports
    them as duplicates), so every group holds different files."""

    threshold: float = Field(description="Copy-descriptor cosine threshold the groups were formed at.", examples=[0.9])
    total_groups: int = Field(description="Groups in the whole collection.", examples=[41])
    grouped_images: int = Field(description="Images that belong to some group.", examples=[97])
    images: int = Field(
        description="Images compared: every image with a copy descriptor (the whole collection, except rows stored "
        "by an older msir until `msir-index duplicates` computes theirs).",
        examples=[10000],
    )
    exact: bool = Field(
        description="Pairs found by an exact search (up to 20,000 images) rather than the inverted-file approximation."
    )
    offset: int
    limit: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last one.")
    groups: list[DuplicateGroup]


class MapPoint(BaseModel):
    id: int = Field(examples=[4217])
    x: float = Field(description="First principal axis, scaled into [-1, 1].", examples=[0.41])
    y: float = Field(description="Second principal axis, same scale.", examples=[-0.07])
    label: str | None = Field(description="The image's first label (null: unlabelled).", examples=["cat"])


class CollectionMap(BaseModel):
    """A 2-D map of the collection's embeddings (PCA), computed once per index position and cached."""

    method: str = Field(description="Projection: pca (the two leading principal axes).", examples=["pca"])
    explained_variance: list[float] = Field(
        description="Share of the embeddings' variance along each axis.", examples=[[0.21, 0.12]]
    )
    total: int = Field(description="Images in the collection.", examples=[10000])
    sampled: bool = Field(
        description="Whether the points are a uniform random sample (seeded) of at most MSIR_MAP_MAX_POINTS images."
    )
    generation: int = Field(description="Index generation the map was computed for.")
    seq: int = Field(description="Change-feed position the map was computed for.")
    points: list[MapPoint]


class HeatMap(BaseModel):
    """A heat-map on the model input's grid (row-major; row 0 at the top): how much each region adds to the score."""

    rows: int = Field(examples=[2])
    cols: int = Field(examples=[2])
    values: list[list[float]] = Field(examples=[[[0.31, 0.12], [0.22, 0.27]]])


class Explanation(BaseModel):
    result_id: int = Field(examples=[4217])
    score: float = Field(description="Cosine of the two embeddings the maps explain.", examples=[0.92])
    query: HeatMap = Field(description="The query's heat-map against this result.")
    result: HeatMap = Field(description="The result's heat-map against the query.")


class ExplainResponse(BaseModel):
    """POST /v1/explain: why each result is similar to the query (Stylianou et al., WACV 2019)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "method": "decomposition",
                    "exact": True,
                    "explanations": [
                        {
                            "result_id": 12,
                            "score": 0.92,
                            "query": {"rows": 2, "cols": 2, "values": [[0.31, 0.12], [0.22, 0.27]]},
                            "result": {"rows": 2, "cols": 2, "values": [[0.25, 0.2], [0.3, 0.17]]},
                        }
                    ],
                    "timings": {"decode": 1.0, "embed": 3.1, "total": 5.2},
                }
            ]
        }
    )

    method: str = Field(
        description="decomposition (embeddings pooled from a feature map: each map sums to the score) or grad-cam "
        "(ViTs with a [CLS] embedding: where the score comes from, not a sum).",
        examples=["decomposition"],
    )
    exact: bool = Field(description="Whether each heat-map sums to the score.")
    explanations: list[Explanation]
    timings: Timings
