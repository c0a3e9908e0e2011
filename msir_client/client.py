"""``Client`` (blocking) and ``AsyncClient`` for the msir REST API, on httpx.

Both build the same requests (:class:`_Call`) and read answers into the server's own pydantic models
(``app.schemas``, which imports nothing but pydantic). A 503 is retried after the server's ``Retry-After`` (or an
exponential backoff when it sends none), within :class:`RetryPolicy`'s bounds; every other error answer raises the
:mod:`msir_client.errors` exception of its status, carrying the server's ``code`` and ``message``.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from app.schemas import (
    AddImagesResponse,
    BatchSearchResponse,
    ClassifyResponse,
    CollectionInfo,
    Health,
    ImageInfo,
    ImagePage,
    Readiness,
    SearchResponse,
)
from msir_client.errors import MsirConnectionError, MsirTimeout, error_from_response, retry_after

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
class _Call:
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


class _Calls:
    """The requests of every API method (shared by both clients)."""

    @staticmethod
    def search(
        image: ImageInput, k: int | None, labels: Sequence[str] | None, split: str | None, exclude_duplicates: bool
    ) -> _Call:
        data: dict[str, Any] = _filters(labels, split)
        if k is not None:
            data["k"] = str(k)
        if exclude_duplicates:
            data["exclude_duplicates"] = "true"
        return _Call("POST", "/v1/search", data=data, files=[("image", _image_part(image))])

    @staticmethod
    def search_batch(
        images: Sequence[ImageInput], k: int | None, labels: Sequence[str] | None, split: str | None
    ) -> _Call:
        data: dict[str, Any] = _filters(labels, split)
        if k is not None:
            data["k"] = str(k)
        files = [("images", _image_part(img, i)) for i, img in enumerate(images)]
        return _Call("POST", "/v1/search/batch", data=data, files=files)

    @staticmethod
    def search_vector(vector: Sequence[float], k: int | None, labels: Sequence[str] | None, split: str | None) -> _Call:
        body = {
            "vector": [float(v) for v in vector],
            "k": k,
            "labels": list(labels) if labels else None,
            "split": split,
        }
        return _Call("POST", "/v1/search/vector", json=body)

    @staticmethod
    def classify(image: ImageInput) -> _Call:
        return _Call("POST", "/v1/classify", files=[("image", _image_part(image))])

    @staticmethod
    def neighbours(image_id: int, k: int | None, labels: Sequence[str] | None, split: str | None) -> _Call:
        return _Call("GET", f"/v1/images/{int(image_id)}/neighbours", params=_query(k=k, label=labels, split=split))

    @staticmethod
    def list_images(limit: int | None, after: int | None, labels: Sequence[str] | None, split: str | None) -> _Call:
        return _Call("GET", "/v1/images", params=_query(limit=limit, after=after, label=labels, split=split))

    @staticmethod
    def add_images(
        images: Sequence[ImageInput],
        labels: Sequence[Sequence[str] | str | None] | None,
        split: str | None,
        metadata: dict[str, Any] | Sequence[dict[str, Any]] | None,
    ) -> _Call:
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
        return _Call("POST", "/v1/images", data=data, files=files)

    @staticmethod
    def edit(
        image_id: int,
        labels: Sequence[str] | None,
        add: Sequence[str] | None,
        remove: Sequence[str] | None,
        metadata: dict[str, Any] | None,
        replace_metadata: bool,
    ) -> _Call:
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
        return _Call("PATCH", f"/v1/images/{int(image_id)}", json=body)


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


def _parse(response: httpx.Response, model: type[M]) -> M:
    return model.model_validate_json(_check(response).content)


class Client:
    """Blocking client::

    with Client("http://127.0.0.1:8000", api_key=...) as msir:
        result = msir.search("query.jpg", k=5)
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),  # frozen: safe as a default
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry
        self._http = httpx.Client(
            base_url=base_url, headers=_auth_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        waited = 0.0
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **call.kwargs())
            except httpx.TimeoutException as exc:
                raise MsirTimeout(f"{call.method} {call.path}: no answer within the timeout ({exc})") from exc
            except httpx.TransportError as exc:
                raise MsirConnectionError(f"{call.method} {call.path}: {exc}") from exc
            wait = self.retry.delay(attempt, response, waited)
            if wait is None:
                return response
            time.sleep(wait)
            waited += wait
            attempt += 1

    # --- reads -----------------------------------------------------------------------------------------------
    def health(self) -> Health:
        return _parse(self._send(_Call("GET", "/healthz")), Health)

    def ready(self) -> Readiness:
        return _parse(self._send(_Call("GET", "/readyz")), Readiness)

    def collection(self) -> CollectionInfo:
        return _parse(self._send(_Call("GET", "/v1/collection")), CollectionInfo)

    def search(
        self,
        image: ImageInput,
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        exclude_duplicates: bool = False,
    ) -> SearchResponse:
        call = _Calls.search(image, k, labels, split, exclude_duplicates)
        return _parse(self._send(call), SearchResponse)

    def search_batch(
        self,
        images: Sequence[ImageInput],
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> BatchSearchResponse:
        return _parse(self._send(_Calls.search_batch(images, k, labels, split)), BatchSearchResponse)

    def search_vector(
        self,
        vector: Sequence[float],
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> SearchResponse:
        return _parse(self._send(_Calls.search_vector(vector, k, labels, split)), SearchResponse)

    def classify(self, image: ImageInput) -> ClassifyResponse:
        return _parse(self._send(_Calls.classify(image)), ClassifyResponse)

    def neighbours(
        self, image_id: int, k: int | None = None, *, labels: Sequence[str] | None = None, split: str | None = None
    ) -> SearchResponse:
        return _parse(self._send(_Calls.neighbours(image_id, k, labels, split)), SearchResponse)

    def image_info(self, image_id: int) -> ImageInfo:
        return _parse(self._send(_Call("GET", f"/v1/images/{int(image_id)}/info")), ImageInfo)

    def list_images(
        self,
        limit: int | None = None,
        *,
        after: int | None = None,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> ImagePage:
        return _parse(self._send(_Calls.list_images(limit, after, labels, split)), ImagePage)

    def iter_images(
        self, *, page_size: int | None = None, labels: Sequence[str] | None = None, split: str | None = None
    ) -> Iterator[ImageInfo]:
        """Every image matching the filters, page by page."""
        after: int | None = None
        while True:
            page = self.list_images(page_size, after=after, labels=labels, split=split)
            yield from page.images
            if page.next_after is None:
                return
            after = page.next_after

    def download(self, image_id: int, *, thumbnail: bool = False) -> bytes:
        """The stored file's bytes (or its thumbnail's)."""
        path = f"/v1/images/{int(image_id)}" + ("/thumbnail" if thumbnail else "")
        return _check(self._send(_Call("GET", path))).content

    # --- writes (API key) ------------------------------------------------------------------------------------
    def add_images(
        self,
        images: Sequence[ImageInput],
        *,
        labels: Sequence[Sequence[str] | str | None] | None = None,
        split: str | None = None,
        metadata: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    ) -> AddImagesResponse:
        """Upload images; ``labels`` has one entry per image (a list of class names, or None)."""
        return _parse(self._send(_Calls.add_images(images, labels, split, metadata)), AddImagesResponse)

    def relabel(
        self,
        image_id: int,
        labels: Sequence[str] | None = None,
        *,
        add: Sequence[str] | None = None,
        remove: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        replace_metadata: bool = False,
    ) -> ImageInfo:
        """Replace an image's labels (``labels``), or add/remove some; merge (or replace) its metadata. The
        embedding is kept. Returns the updated image."""
        call = _Calls.edit(image_id, labels, add, remove, metadata, replace_metadata)
        return _parse(self._send(call), ImageInfo)

    def delete_image(self, image_id: int) -> None:
        _check(self._send(_Call("DELETE", f"/v1/images/{int(image_id)}")))


class AsyncClient:
    """The same methods as :class:`Client`, awaitable::

    async with AsyncClient("http://127.0.0.1:8000") as msir:
        result = await msir.search("query.jpg", k=5)
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = RetryPolicy(),  # frozen: safe as a default
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=_auth_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        waited = 0.0
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **call.kwargs())
            except httpx.TimeoutException as exc:
                raise MsirTimeout(f"{call.method} {call.path}: no answer within the timeout ({exc})") from exc
            except httpx.TransportError as exc:
                raise MsirConnectionError(f"{call.method} {call.path}: {exc}") from exc
            wait = self.retry.delay(attempt, response, waited)
            if wait is None:
                return response
            await asyncio.sleep(wait)
            waited += wait
            attempt += 1

    async def health(self) -> Health:
        return _parse(await self._send(_Call("GET", "/healthz")), Health)

    async def ready(self) -> Readiness:
        return _parse(await self._send(_Call("GET", "/readyz")), Readiness)

    async def collection(self) -> CollectionInfo:
        return _parse(await self._send(_Call("GET", "/v1/collection")), CollectionInfo)

    async def search(
        self,
        image: ImageInput,
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        exclude_duplicates: bool = False,
    ) -> SearchResponse:
        call = _Calls.search(image, k, labels, split, exclude_duplicates)
        return _parse(await self._send(call), SearchResponse)

    async def search_batch(
        self,
        images: Sequence[ImageInput],
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> BatchSearchResponse:
        return _parse(await self._send(_Calls.search_batch(images, k, labels, split)), BatchSearchResponse)

    async def search_vector(
        self,
        vector: Sequence[float],
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> SearchResponse:
        return _parse(await self._send(_Calls.search_vector(vector, k, labels, split)), SearchResponse)

    async def classify(self, image: ImageInput) -> ClassifyResponse:
        return _parse(await self._send(_Calls.classify(image)), ClassifyResponse)

    async def neighbours(
        self, image_id: int, k: int | None = None, *, labels: Sequence[str] | None = None, split: str | None = None
    ) -> SearchResponse:
        return _parse(await self._send(_Calls.neighbours(image_id, k, labels, split)), SearchResponse)

    async def image_info(self, image_id: int) -> ImageInfo:
        return _parse(await self._send(_Call("GET", f"/v1/images/{int(image_id)}/info")), ImageInfo)

    async def list_images(
        self,
        limit: int | None = None,
        *,
        after: int | None = None,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> ImagePage:
        return _parse(await self._send(_Calls.list_images(limit, after, labels, split)), ImagePage)

    async def iter_images(
        self, *, page_size: int | None = None, labels: Sequence[str] | None = None, split: str | None = None
    ) -> AsyncIterator[ImageInfo]:
        after: int | None = None
        while True:
            page = await self.list_images(page_size, after=after, labels=labels, split=split)
            for image in page.images:
                yield image
            if page.next_after is None:
                return
            after = page.next_after

    async def download(self, image_id: int, *, thumbnail: bool = False) -> bytes:
        path = f"/v1/images/{int(image_id)}" + ("/thumbnail" if thumbnail else "")
        return _check(await self._send(_Call("GET", path))).content

    async def add_images(
        self,
        images: Sequence[ImageInput],
        *,
        labels: Sequence[Sequence[str] | str | None] | None = None,
        split: str | None = None,
        metadata: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    ) -> AddImagesResponse:
        return _parse(await self._send(_Calls.add_images(images, labels, split, metadata)), AddImagesResponse)

    async def relabel(
        self,
        image_id: int,
        labels: Sequence[str] | None = None,
        *,
        add: Sequence[str] | None = None,
        remove: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        replace_metadata: bool = False,
    ) -> ImageInfo:
        call = _Calls.edit(image_id, labels, add, remove, metadata, replace_metadata)
        return _parse(await self._send(call), ImageInfo)

    async def delete_image(self, image_id: int) -> None:
        _check(await self._send(_Call("DELETE", f"/v1/images/{int(image_id)}")))
