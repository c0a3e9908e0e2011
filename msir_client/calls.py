"""The requests of the msir REST API as data (:class:`Call`), built once for both clients, and the retry policy.

``Client`` and ``AsyncClient`` (:mod:`msir_client.client`) only send these and parse the answers.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from msir_client.errors import error_from_response, retry_after

M = TypeVar("M", bound=BaseModel)
# An image to upload: raw bytes, a path, an open binary file, or (filename, bytes).
ImageInput = bytes | str | os.PathLike[str] | IO[bytes] | tuple[str, bytes]
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of 503 answers: at most ``max_retries`` more attempts and ``max_total_s`` of waiting.

    The wait before retry ``n`` (0-based) is the server's ``Retry-After`` when given, else ``backoff_s * 2**n``;
    either way at most ``max_backoff_s``."""

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    max_total_s: float = 30.0

    def delay(self, attempt: int, response: httpx.Response, waited_s: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if response.status_code != 503 or attempt >= self.max_retries:
            return None
        hinted = retry_after(response)
        wait = min(hinted if hinted is not None else self.backoff_s * 2**attempt, self.max_backoff_s)
        if waited_s + wait > self.max_total_s:
            return None
        return wait


NO_RETRY = RetryPolicy(max_retries=0)


@dataclass
class Call:
    """One API request, independent of the transport (sync or async)."""

    method: str
    path: str
    params: list[tuple[str, str | int]] = field(default_factory=list)
    data: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    json: Any = None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"params": self.params or None}
        if self.data is not None:
            out["data"] = self.data
        if self.files is not None:
            out["files"] = self.files
        if self.json is not None:
            out["json"] = self.json
        return out


def _image_part(image: ImageInput, index: int = 0) -> tuple[str, bytes, str]:
    """``(filename, bytes, content type)``; files are read once so a retry can send them again."""
    if isinstance(image, tuple):
        name, data = image
    elif isinstance(image, bytes | bytearray | memoryview):
        name, data = f"image-{index}", bytes(image)
    elif isinstance(image, str | os.PathLike):
        path = Path(image)
        name, data = path.name, path.read_bytes()
    else:
        name, data = Path(getattr(image, "name", f"image-{index}")).name, image.read()
    return name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"


def _filters(labels: Sequence[str] | None, split: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if labels:
        out["label"] = list(labels)
    if split is not None:
        out["split"] = split
    return out


def _query(**values: Any) -> list[tuple[str, str | int]]:
    out: list[tuple[str, str | int]] = []
    for key, value in values.items():
        if value is None:
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            out.append((key, v))
    return out


class Calls:
    """The requests of every API method (shared by both clients)."""

    @staticmethod
    def search(
        image: ImageInput,
        k: int | None,
        labels: Sequence[str] | None,
        split: str | None,
        exclude_duplicates: bool,
        collapse_duplicates: bool = False,
        min_score: float | None = None,
    ) -> Call:
        data: dict[str, Any] = _filters(labels, split)
        if k is not None:
            data["k"] = str(k)
        if exclude_duplicates:
            data["exclude_duplicates"] = "true"
        if collapse_duplicates:
            data["collapse_duplicates"] = "true"
        if min_score is not None:
            data["min_score"] = repr(float(min_score))
        return Call("POST", "/v1/search", data=data, files=[("image", _image_part(image))])

    @staticmethod
    def search_batch(
        images: Sequence[ImageInput],
        k: int | None,
        labels: Sequence[str] | None,
        split: str | None,
        min_score: float | None = None,
    ) -> Call:
        data: dict[str, Any] = _filters(labels, split)
        if k is not None:
            data["k"] = str(k)
        if min_score is not None:
            data["min_score"] = repr(float(min_score))
        files = [("images", _image_part(img, i)) for i, img in enumerate(images)]
        return Call("POST", "/v1/search/batch", data=data, files=files)

    @staticmethod
    def search_vector(
        vector: Sequence[float],
        k: int | None,
        labels: Sequence[str] | None,
        split: str | None,
        min_score: float | None = None,
    ) -> Call:
        body = {
            "vector": [float(v) for v in vector],
            "k": k,
            "labels": list(labels) if labels else None,
            "split": split,
            "min_score": None if min_score is None else float(min_score),
        }
        return Call("POST", "/v1/search/vector", json=body)

    @staticmethod
    def classify(image: ImageInput) -> Call:
        return Call("POST", "/v1/classify", files=[("image", _image_part(image))])

    @staticmethod
    def neighbours(
        image_id: int, k: int | None, labels: Sequence[str] | None, split: str | None, min_score: float | None = None
    ) -> Call:
        params = _query(k=k, label=labels, split=split, min_score=None if min_score is None else repr(float(min_score)))
        return Call("GET", f"/v1/images/{int(image_id)}/neighbours", params=params)

    @staticmethod
    def list_images(
        limit: int | None, cursor: str | None, after: int | None, labels: Sequence[str] | None, split: str | None
    ) -> Call:
        params = _query(limit=limit, cursor=cursor, after=after, label=labels, split=split)
        return Call("GET", "/v1/images", params=params)

    @staticmethod
    def add_images(
        images: Sequence[ImageInput],
        labels: Sequence[Sequence[str] | str | None] | None,
        split: str | None,
        metadata: dict[str, Any] | Sequence[dict[str, Any]] | None,
    ) -> Call:
        import json

        files = [("images", _image_part(img, i)) for i, img in enumerate(images)]
        data: dict[str, Any] = {}
        if labels is not None:
            if len(labels) != len(files):
                raise ValueError(f"labels: {len(labels)} entries for {len(files)} images (one per image)")
            data["labels"] = [v if isinstance(v, str) else "|".join(v or []) for v in labels]
        if split is not None:
            data["split"] = split
        if metadata is not None:
            data["metadata"] = json.dumps(metadata if isinstance(metadata, dict) else list(metadata))
        return Call("POST", "/v1/images", data=data, files=files)

    @staticmethod
    def edit(
        image_id: int,
        labels: Sequence[str] | None,
        add: Sequence[str] | None,
        remove: Sequence[str] | None,
        metadata: dict[str, Any] | None,
        replace_metadata: bool,
    ) -> Call:
        body: dict[str, Any] = {}
        if labels is not None:
            body["labels"] = list(labels)
        if add:
            body["add_labels"] = list(add)
        if remove:
            body["remove_labels"] = list(remove)
        if metadata is not None:
            body["metadata"] = metadata
            body["replace_metadata"] = replace_metadata
        return Call("PATCH", f"/v1/images/{int(image_id)}", json=body)

    @staticmethod
    def search_feedback(
        positive_ids: Sequence[int],
        negative_ids: Sequence[int],
        positive_images: Sequence[ImageInput],
        negative_images: Sequence[ImageInput],
        negative_weight: float | None,
        k: int | None,
        labels: Sequence[str] | None,
        split: str | None,
    ) -> Call:
        data: dict[str, Any] = _filters(labels, split)
        if k is not None:
            data["k"] = str(k)
        if positive_ids:
            data["positive_id"] = [str(int(i)) for i in positive_ids]
        if negative_ids:
            data["negative_id"] = [str(int(i)) for i in negative_ids]
        if negative_weight is not None:
            data["negative_weight"] = str(float(negative_weight))
        files = [("positive", _image_part(img, i)) for i, img in enumerate(positive_images)]
        files += [("negative", _image_part(img, i)) for i, img in enumerate(negative_images)]
        return Call("POST", "/v1/search/feedback", data=data, files=files or None)

    @staticmethod
    def duplicates(threshold: float | None, offset: int | None, limit: int | None) -> Call:
        return Call("GET", "/v1/duplicates", params=_query(threshold=threshold, offset=offset, limit=limit))


def explain_call(result_ids: Sequence[int], image: ImageInput | None, query_id: int | None) -> Call:
    """Heat-maps of the query (an image: POST /v1/explain; or a stored image: GET /v1/images/{id}/explain) against
    each stored result."""
    if (image is None) == (query_id is None):
        raise ValueError("give the query as exactly one of image and query_id")
    ids = [int(i) for i in result_ids]
    if image is None:
        return Call("GET", f"/v1/images/{int(query_id or 0)}/explain", params=_query(result_id=ids))
    data: dict[str, Any] = {"result_id": [str(i) for i in ids]}
    return Call("POST", "/v1/explain", data=data, files=[("image", _image_part(image))])


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def check_status(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


def parse(response: httpx.Response, model: type[M]) -> M:
    return model.model_validate_json(check_status(response).content)
