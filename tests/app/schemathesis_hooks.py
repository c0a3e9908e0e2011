"""schemathesis hooks for tests/app/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Generated file fields are random bytes, which only ever reach the 415/422 answers, and which schemathesis would
call valid (the schema cannot say "a decodable image"). The ``binary`` format strategy below puts real, decodable
images (PNG, JPEG, WebP, GIF, BMP, grey, RGBA, tiny, EXIF-rotated) in every file field meant to be valid, so the
search, classify and upload paths run to the end and their 200/201 answers are checked against the schema;
mutated bodies keep schemathesis's own bytes. ``filter_case`` drops the few "invalid" bodies that multipart cannot
tell from valid ones.

Filter labels are the same kind of constraint: valid only when some image carries them, which changes as the stateful
phase adds, relabels and deletes images, so no schema can state it. ``before_call`` puts labels the collection holds
right now (asked of the server under test, MSIR_SCHEMATHESIS_BASE_URL) in the filter fields of cases meant to be
valid; invalid cases keep theirs, and the 422 for an unknown label is tested in tests/app/test_errors.py. A ``split``
filter is the same (a split no image is in is a 422, tested in tests/app/test_json_rule.py): it gets a split the
collection holds. A listing ``cursor`` is valid only when the server wrote it: valid cases get one.
"""

from __future__ import annotations

import io
import os
import zlib
from typing import Any

import httpx
import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.transport.serialization import Binary

from app.pagination import encode_cursor

FILE_FIELDS = ("image", "images")


def _encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _images() -> list[bytes]:
    rng = np.random.default_rng(11)
    out = []
    for i, (size, mode, fmt) in enumerate(
        [
            ((24, 24), "RGB", "PNG"),
            ((40, 30), "RGB", "JPEG"),
            ((16, 48), "L", "PNG"),
            ((20, 20), "RGBA", "PNG"),
            ((64, 64), "RGB", "WEBP"),
            ((8, 8), "RGB", "GIF"),
            ((300, 200), "RGB", "JPEG"),
            ((1, 1), "RGB", "BMP"),
        ]
    ):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(pixels).convert(mode)
        exif = Image.Exif()
        if fmt == "JPEG" and i % 2:
            exif[0x0112] = 6  # rotated: EXIF orientation on the strict JPEG path
        out.append(_encode(img, fmt, exif=exif.tobytes()) if fmt == "JPEG" else _encode(img, fmt))
    return out


# Binary: how schemathesis itself carries generated file contents (a plain bytes value would fail its schema
# validation, making the case look invalid).
IMAGES = [Binary(data) for data in _images()]


SCALAR_FIELDS = (
    "image",
    "k",
    "split",
    "exclude_duplicates",
    "collapse_duplicates",
    "min_score",
    "rerank",
    "negative_weight",
)
# Text fields of the forms: any value is text on the wire, so a number, boolean or object there is no invalid case.
TEXT_FIELDS = ("label", "labels", "split")
# Filter fields (a form's, a query's or a JSON body's) whose values must be labels some image carries.
FILTER_FIELDS = {"label", "labels"}
ARRAY_FIELDS = {"label", "labels"}


# Every file field (``format: binary``) of a case meant to be valid holds one of these; negative cases still get
# schemathesis's own mutations of the field.
schemathesis.openapi.format("binary", st.sampled_from(IMAGES))


def _mode(case: Any) -> str | None:
    meta = getattr(case, "meta", None)
    return str(meta.generation.mode) if meta is not None else None


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: Any) -> bool:
    """Drop the "invalid" bodies that multipart/form-data cannot tell from valid ones: a single-value field
    turned into a list of at most one element is that element (or nothing) on the wire, and metadata turned into
    a list of objects is the documented one-object-per-image form."""
    body = case.body
    if not isinstance(body, dict):
        # A feedback search without a form (every field is optional on its own) has no positive example: a
        # constraint across fields (tested in tests/app/test_feedback.py).
        return not (_mode(case) == "positive" and case.operation.path == "/v1/search/feedback")
    if _mode(case) == "positive":
        # One `labels` value per image: a constraint between two fields that JSON Schema cannot state (the 422 for
        # a mismatch is tested in tests/app/test_images.py).
        labels, images = body.get("labels"), body.get("images")
        if isinstance(labels, list) and isinstance(images, list) and len(labels) != len(images):
            return False
        if case.operation.path == "/v1/search/feedback":
            # At least one positive example (an id or an upload) and at most 32 in all: constraints across fields
            # (their 422s are tested in tests/app/test_feedback.py).
            counts = {name: len(_as_list(body.get(name))) for name in FEEDBACK_EXAMPLES}
            return counts["positive_id"] + counts["positive"] > 0 and sum(counts.values()) <= 32
        return True
    if _mode(case) != "negative":
        return True
    for name in SCALAR_FIELDS:
        if isinstance(body.get(name), list) and len(body[name]) <= 1:
            return False
    if getattr(case, "media_type", None) == "multipart/form-data":
        for name in TEXT_FIELDS:
            values = body.get(name)
            items = values if isinstance(values, list) else [values]
            if name in body and not all(isinstance(item, str) for item in items):
                return False
            if name in ARRAY_FIELDS and isinstance(values, str):
                return False  # one text value is a one-element list on the wire
    # The integers 0 and 1 are, as form text, two of the spellings of a boolean.
    for name in ("exclude_duplicates", "collapse_duplicates"):
        if body.get(name) in (0, 1) and not isinstance(body.get(name), bool):
            return False
    metadata = body.get("metadata")
    return not (isinstance(metadata, list) and all(isinstance(item, dict) for item in metadata))


def _vocabulary(field: str = "label") -> list[str]:
    """Labels (or, for ``field="split"``, splits) some image carries right now."""
    base = os.environ["MSIR_SCHEMATHESIS_BASE_URL"]
    answer = httpx.get(f"{base}/v1/collection", timeout=30)
    answer.raise_for_status()
    if field == "split":
        return sorted(set(answer.json()["splits"]) - {"(none)"})
    return sorted(answer.json()["label_names"])


def _known(values: Any, vocabulary: list[str]) -> Any:
    """The same shape (one value or a list) with each value replaced by a label the collection holds."""
    if not vocabulary:
        return None
    if isinstance(values, list):
        return [vocabulary[zlib.crc32(str(v).encode()) % len(vocabulary)] for v in values] or None
    return vocabulary[zlib.crc32(str(values).encode()) % len(vocabulary)]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value in (None, "") else [value]


FEEDBACK_EXAMPLES = ("positive_id", "negative_id", "positive", "negative")


def _collection_ids() -> list[int]:
    base = os.environ["MSIR_SCHEMATHESIS_BASE_URL"]
    return [im["id"] for im in httpx.get(f"{base}/v1/images", params={"limit": 64}, timeout=30).json()["images"]]


def _explained_ids(case: Any) -> None:
    """Explanations of images the collection holds (ids are any int64 in the schema; a missing one is a 404)."""
    ids = _collection_ids()
    if not ids:
        return
    for container in (case.body, case.query, case.path_parameters):
        if not isinstance(container, dict):
            continue
        for name in ("result_id", "image_id"):
            if name in container:
                values = container[name]
                mapped = [ids[zlib.crc32(str(v).encode()) % len(ids)] for v in _as_list(values)]
                container[name] = mapped if isinstance(values, list) else mapped[0]


def _stored_ids(body: dict[str, Any]) -> None:
    """Feedback examples given by id name images the collection holds; positives and negatives disjoint."""
    ids = _collection_ids()
    half = len(ids) // 2
    for name, pool in (("positive_id", ids[:half]), ("negative_id", ids[half:])):
        values = _as_list(body.get(name))
        if values and pool:
            body[name] = [pool[zlib.crc32(str(v).encode()) % len(pool)] for v in values]


def _valid_cursor(query: dict[str, Any]) -> None:
    """A listing cursor is opaque: only one the server wrote is valid, which a pattern cannot state (the 422 for
    any other is tested in tests/app/test_pagination.py). A valid case gets a cursor of the same run of ids, and
    not the deprecated ``after`` beside it (one or the other)."""
    query["cursor"] = encode_cursor(zlib.crc32(str(query["cursor"]).encode()) % 64)
    query.pop("after", None)


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: Any, **kwargs: Any) -> None:
    """Valid cases filter by labels the collection holds at the moment of the call (see the module's text)."""
    if _mode(case) != "positive":
        return
    if case.operation.path in ("/v1/explain", "/v1/images/{image_id}/explain"):
        _explained_ids(case)
        case._sync_validated_hashes()
    if case.operation.path == "/v1/search/feedback" and isinstance(case.body, dict):
        _stored_ids(case.body)
        # Example uploads are files: one generated as an empty part (its schema is a nullable list) is an image too.
        for name in ("positive", "negative"):
            values = _as_list(case.body.get(name))
            if values:
                case.body[name] = [
                    v if isinstance(v, Binary) and v.data else IMAGES[i % len(IMAGES)] for i, v in enumerate(values)
                ]
        case._sync_validated_hashes()  # the edited ids stay valid (see the end of this hook)
    # Uploads' and relabels' `labels` are new free text, not a filter; every other operation's labels filter.
    if case.operation.method.upper() in ("POST", "PATCH") and case.operation.path.startswith("/v1/images"):
        return
    if isinstance(case.query, dict) and case.query.get("cursor") is not None:
        _valid_cursor(case.query)
    containers = [c for c in (case.query, case.body) if isinstance(c, dict)]
    names = [*FILTER_FIELDS, "split"]
    fields = [(c, name) for c in containers for name in names if c.get(name) not in (None, [], "")]
    if not fields:
        return
    vocabularies = {"label": _vocabulary(), "split": _vocabulary("split")}
    for container, name in fields:
        value = _known(container[name], vocabularies["split" if name == "split" else "label"])
        if value is None:
            del container[name]
        else:
            container[name] = value
    # The edit keeps the case valid (filter labels are free text in the schema), but schemathesis re-validates an
    # edited body and cannot validate one holding files, which would relabel the case as invalid: take the edited
    # containers as the validated state (schemathesis is pinned in pyproject.toml for this private call).
    case._sync_validated_hashes()
