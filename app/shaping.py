"""Stored rows as API answers: the neighbour and image-info models, their URLs, and filter label values."""

from __future__ import annotations

from app.metadata_limits import servable
from indexer import Hit, ImageRecord
from msir_schemas.api import ImageInfo, Neighbour


def image_urls(image_id: int) -> dict[str, str]:
    return {"image_url": f"/v1/images/{image_id}", "thumbnail_url": f"/v1/images/{image_id}/thumbnail"}


def neighbour(hit: Hit, same_class_probability: float | None = None) -> Neighbour:
    record = hit.record
    return Neighbour(
        id=hit.id,
        score=round(float(hit.score), 6),
        labels=list(record.labels),
        split=record.split,
        metadata=servable(record.metadata),
        same_class_probability=same_class_probability,
        **image_urls(hit.id),
    )


def above(hits: list[Hit], min_score: float | None) -> list[Hit]:
    """The hits scoring at least ``min_score`` (all of them without one)."""
    return hits if min_score is None else [h for h in hits if h.score >= min_score]


def image_info(record: ImageRecord) -> ImageInfo:
    return ImageInfo(
        id=record.id,
        labels=list(record.labels),
        split=record.split,
        width=record.width,
        height=record.height,
        sha256=record.sha256,
        source=record.source,
        added_at=record.added_at,
        metadata=servable(record.metadata),
        **image_urls(record.id),
    )


def split_labels(values: list[str]) -> list[str]:
    """``["a|b", "c"]`` -> ``["a", "b", "c"]`` (order kept, blanks and repeats dropped). Only spaces around a
    name are dropped."""
    out: list[str] = []
    for value in values:
        for part in value.split("|"):
            label = part.strip(" ")
            if label and label not in out:
                out.append(label)
    return out
