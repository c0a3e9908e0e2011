"""GET /v1/duplicates: the collection's near-duplicate groups, page by page (:mod:`indexer.duplicates`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.deps import ServiceDep, require_read_key
from app.derived import duplicate_groups
from app.routes import errors
from app.shaping import image_urls
from indexer.duplicates import IDENTICAL_COSINE
from msir_schemas.api import DuplicateGroup, DuplicateMember, DuplicatePage

MAX_GROUPS_PAGE = 100

router = APIRouter(prefix="/v1", tags=["duplicates"], dependencies=[Depends(require_read_key)])


@router.get(
    "/duplicates",
    response_model=DuplicatePage,
    summary="Near-duplicate groups of the collection (re-encoded, resized, cropped, flipped copies), largest first",
    responses=errors(401, 403, 422, 503),
)
async def list_duplicates(
    service: ServiceDep,
    threshold: Annotated[
        float | None,
        Query(gt=0, le=1, description="Copy-descriptor cosine (0 < t <= 1); default MSIR_DUPLICATE_THRESHOLD."),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=2**31, description="Groups to skip (the previous page's next_offset).")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_GROUPS_PAGE, description=f"Groups per page (1..{MAX_GROUPS_PAGE}).")] = 20,
) -> DuplicatePage:
    groups = await duplicate_groups(service, threshold)
    page = range(offset, min(offset + limit, len(groups)))
    wanted = [groups.members(g) for g in page]
    records = await service.blocking(service.collection.get_many, [int(i) for ids, _ in wanted for i in ids.tolist()])
    shaped: list[DuplicateGroup] = []
    for ids, scores in wanted:
        members = [
            DuplicateMember(
                id=i,
                score=round(float(s), 6),
                identical=bool(s >= 1.0 - IDENTICAL_COSINE),
                labels=list(records[i].labels),
                split=records[i].split,
                **image_urls(i),
            )
            for i, s in zip(ids.tolist(), scores.tolist(), strict=True)
            if i in records  # a row deleted since the groups were formed is left out
        ]
        shaped.append(DuplicateGroup(representative=int(ids[0]), size=len(members), members=members))
    end = offset + len(page)
    return DuplicatePage(
        threshold=groups.threshold,
        total_groups=len(groups),
        grouped_images=groups.grouped,
        images=groups.vectors,
        exact=groups.exact,
        offset=offset,
        limit=limit,
        next_offset=end if end < len(groups) else None,
        groups=shaped,
    )
