"""POST /v1/search: similar images to an uploaded one, with the classifier's and the neighbours' predictions; the same
for several images at once (/v1/search/batch) and for an embedding given directly (/v1/search/vector)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile

from app.deps import ServiceDep, require_read_key, resolve_k
from app.derived import COLLAPSE_FETCH, collapse_hits
from app.errors import ApiError
from app.filters import check_split
from app.routes import errors
from app.service import SearchArgs, StageTimer
from app.shaping import above
from indexer import RerankConfig, RerankMethod
from msir_schemas.api import BatchSearchResponse, BatchSearchResult, SearchResponse, Timings, VectorSearchRequest

# Query images per /v1/search/batch request: one forward pass holds them all, so the batch is bounded.
MAX_BATCH_QUERIES = 64
MIN_SCORE_HELP = "Drop results scoring below this (-1..1, the cosine's range; with re-ranking, the re-ranking's score)."
MinScore = Annotated[float | None, Form(ge=-1.0, le=1.0, description=MIN_SCORE_HELP)]

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_read_key)])


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Find the images most similar to an uploaded image",
    responses=errors(400, 401, 403, 413, 415, 422, 429, 503),
)
async def search(
    service: ServiceDep,
    image: Annotated[UploadFile, File(description="The query image (any format Pillow decodes).")],
    k: Annotated[int | None, Form(description="Neighbours to return (1..MSIR_MAX_K; default MSIR_DEFAULT_K).")] = None,
    label: Annotated[
        list[str] | None,
        Form(description="Only neighbours carrying one of these labels (repeat the field for several)."),
    ] = None,
    split: Annotated[str | None, Form(description="Only neighbours from this split (train, test...).")] = None,
    exclude_duplicates: Annotated[
        bool, Form(description="Leave out stored images with exactly the same content (sha256) as the query.")
    ] = False,
    # Optional rather than a plain default: a multipart form sends an empty field for "unset", which FastAPI reads
    # as the default; declared nullable, the schema says so too (an empty value is the default, none).
    rerank: Annotated[
        RerankMethod | None,
        Form(
            description="Re-ranking: none, aqe (average query expansion), dba (database-side augmentation of the "
            "top 100) or kreciprocal (k-reciprocal re-ranking of the top 100). With re-ranking, a neighbour's "
            "score is the re-ranking's score (higher is better). Gains and costs: results/RESULTS.md."
        ),
    ] = None,
    collapse_duplicates: Annotated[
        bool,
        Form(description="Keep one result per near-duplicate group (GET /v1/duplicates, MSIR_DUPLICATE_THRESHOLD)."),
    ] = False,
    min_score: MinScore = None,
) -> Response:
    wanted = resolve_k(k, service.settings)
    args = SearchArgs(
        wanted * COLLAPSE_FETCH if collapse_duplicates else wanted,
        await service.check_labels(label),
        await check_split(service, split),
        exclude_duplicates,
        RerankConfig(method=rerank or "none"),
    )
    timer = StageTimer()
    result = await service.query(image, "image", timer, args)
    hits = above(result.hits or [], min_score)
    if collapse_duplicates:
        hits = await collapse_hits(service, hits, wanted)
    service.observe(timer)
    answer = SearchResponse(
        k=wanted,
        neighbours=service.neighbours(hits, cosine=args.rerank is None or args.rerank.method == "none"),
        predictions=service.predictions(result.logits),
        predictions_scope=(await service.predictions_scope())[0],
        multi_label=service.multi_label,
        knn_prediction=service.knn(hits),
        timings=Timings(**timer.as_dict()),
    )
    # Serialised by pydantic directly: FastAPI would validate the model it was just built from again (the hot
    # path's largest framework cost after parsing the form). The OpenAPI schema still comes from response_model.
    return Response(answer.model_dump_json(), media_type="application/json")


@router.post(
    "/search/batch",
    response_model=BatchSearchResponse,
    summary=f"Search with several images at once (one forward pass; at most {MAX_BATCH_QUERIES})",
    responses=errors(401, 403, 413, 415, 422, 429, 503),
)
async def search_batch(
    service: ServiceDep,
    images: Annotated[list[UploadFile], File(description="The query images (repeat the field).")],
    k: Annotated[int | None, Form(description="Neighbours per query (1..MSIR_MAX_K; default MSIR_DEFAULT_K).")] = None,
    label: Annotated[list[str] | None, Form(description="Only neighbours carrying one of these labels.")] = None,
    split: Annotated[str | None, Form(description="Only neighbours from this split.")] = None,
    exclude_duplicates: Annotated[
        bool, Form(description="Leave out stored images with exactly the same content as any of the queries.")
    ] = False,
    min_score: MinScore = None,
) -> BatchSearchResponse:
    if len(images) > MAX_BATCH_QUERIES:
        raise ApiError(
            422,
            "too_many_images",
            f"form field 'images': {len(images)} files; at most {MAX_BATCH_QUERIES} per request",
            details=[{"field": "images", "message": f"at most {MAX_BATCH_QUERIES} files"}],
        )
    labels = await service.check_labels(label)
    args = SearchArgs(resolve_k(k, service.settings), labels, await check_split(service, split), exclude_duplicates)
    timer = StageTimer()
    results = await service.query_batch(images, "images", timer, args)
    service.observe(timer)
    return BatchSearchResponse(
        k=args.k,
        multi_label=service.multi_label,
        predictions_scope=(await service.predictions_scope())[0],
        results=[
            BatchSearchResult(
                filename=upload.filename or f"images[{i}]",
                neighbours=service.neighbours(hits),
                predictions=service.predictions(r.logits),
                knn_prediction=service.knn(hits),
            )
            for i, (upload, r) in enumerate(zip(images, results, strict=True))
            for hits in [above(r.hits or [], min_score)]
        ],
        timings=Timings(**timer.as_dict()),
    )


@router.post(
    "/search/vector",
    response_model=SearchResponse,
    summary="Find the images nearest to an embedding vector (embedding_dim numbers, see /v1/collection)",
    responses=errors(401, 403, 422, 429, 503),
)
async def search_vector(service: ServiceDep, body: VectorSearchRequest) -> SearchResponse:
    k = resolve_k(body.k, service.settings)
    labels = await service.check_labels(body.labels, "labels")
    vector = service.check_vector(body.vector)
    timer = StageTimer()
    hits = await service.search(vector, k, timer, labels=labels, split=await check_split(service, body.split))
    return service.answer_without_image(k, above(hits, body.min_score), timer)
