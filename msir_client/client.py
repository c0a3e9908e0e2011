"""``Client`` (blocking) and ``AsyncClient`` for the msir REST API, on httpx.

Both build the same requests (:class:`Call`) and read answers into the server's own pydantic models
(``msir_schemas.api``, which imports nothing but pydantic). A 503 is retried after the server's ``Retry-After`` (or an
exponential backoff when it sends none), within :class:`RetryPolicy`'s bounds; every other error answer raises the
:mod:`msir_client.errors` exception of its status, carrying the server's ``code`` and ``message``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx

from msir_client.calls import (
    DEFAULT_TIMEOUT,
    Call,
    Calls,
    ImageInput,
    RetryPolicy,
    auth_headers,
    check_status,
    explain_call,
    parse,
)
from msir_client.errors import MsirConnectionError, MsirTimeout
from msir_schemas.api import (
    AddImagesResponse,
    BatchSearchResponse,
    ClassifyResponse,
    CollectionInfo,
    CollectionMap,
    DuplicatePage,
    ExplainResponse,
    Health,
    ImageInfo,
    ImagePage,
    Readiness,
    SearchResponse,
)


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
            base_url=base_url, headers=auth_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> httpx.Response:
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
        return parse(self._send(Call("GET", "/healthz")), Health)

    def ready(self) -> Readiness:
        return parse(self._send(Call("GET", "/readyz")), Readiness)

    def collection(self) -> CollectionInfo:
        return parse(self._send(Call("GET", "/v1/collection")), CollectionInfo)

    def search(
        self,
        image: ImageInput,
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        exclude_duplicates: bool = False,
        collapse_duplicates: bool = False,
        min_score: float | None = None,
    ) -> SearchResponse:
        """``min_score``: drop results below it (-1..1); ``collapse_duplicates``: one per near-duplicate group."""
        call = Calls.search(image, k, labels, split, exclude_duplicates, collapse_duplicates, min_score)
        return parse(self._send(call), SearchResponse)

    def search_batch(
        self,
        images: Sequence[ImageInput],
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        min_score: float | None = None,
    ) -> BatchSearchResponse:
        return parse(self._send(Calls.search_batch(images, k, labels, split, min_score)), BatchSearchResponse)

    def search_vector(
        self,
        vector: Sequence[float],
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        min_score: float | None = None,
    ) -> SearchResponse:
        return parse(self._send(Calls.search_vector(vector, k, labels, split, min_score)), SearchResponse)

    def classify(self, image: ImageInput) -> ClassifyResponse:
        return parse(self._send(Calls.classify(image)), ClassifyResponse)

    def neighbours(
        self,
        image_id: int,
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        min_score: float | None = None,
    ) -> SearchResponse:
        return parse(self._send(Calls.neighbours(image_id, k, labels, split, min_score)), SearchResponse)

    def image_info(self, image_id: int) -> ImageInfo:
        return parse(self._send(Call("GET", f"/v1/images/{int(image_id)}/info")), ImageInfo)

    def list_images(
        self,
        limit: int | None = None,
        *,
        cursor: str | None = None,
        after: int | None = None,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> ImagePage:
        """One page; pass the previous page's ``next_cursor`` as ``cursor`` (``after`` is deprecated)."""
        return parse(self._send(Calls.list_images(limit, cursor, after, labels, split)), ImagePage)

    def iter_images(
        self, *, page_size: int | None = None, labels: Sequence[str] | None = None, split: str | None = None
    ) -> Iterator[ImageInfo]:
        """Every image matching the filters, page by page (keyset cursor: no image twice, none skipped that
        existed throughout, whatever is added or deleted meanwhile)."""
        cursor: str | None = None
        while True:
            page = self.list_images(page_size, cursor=cursor, labels=labels, split=split)
            yield from page.images
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def download(self, image_id: int, *, thumbnail: bool = False) -> bytes:
        """The stored file's bytes (or its thumbnail's)."""
        path = f"/v1/images/{int(image_id)}" + ("/thumbnail" if thumbnail else "")
        return check_status(self._send(Call("GET", path))).content

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
        return parse(self._send(Calls.add_images(images, labels, split, metadata)), AddImagesResponse)

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
        call = Calls.edit(image_id, labels, add, remove, metadata, replace_metadata)
        return parse(self._send(call), ImageInfo)

    def delete_image(self, image_id: int) -> None:
        check_status(self._send(Call("DELETE", f"/v1/images/{int(image_id)}")))

    # --- near-duplicates and the map ---------------------------------------------------------------------------
    def duplicates(
        self, *, threshold: float | None = None, offset: int | None = None, limit: int | None = None
    ) -> DuplicatePage:
        """One page of near-duplicate groups (``threshold``: cosine, default the server's MSIR_DUPLICATE_THRESHOLD)."""
        return parse(self._send(Calls.duplicates(threshold, offset, limit)), DuplicatePage)

    def collection_map(self) -> CollectionMap:
        """The 2-D (PCA) map of the collection: points with id, x, y and label."""
        return parse(self._send(Call("GET", "/v1/map")), CollectionMap)

    def search_feedback(
        self,
        positive_ids: Sequence[int] = (),
        negative_ids: Sequence[int] = (),
        *,
        positive_images: Sequence[ImageInput] = (),
        negative_images: Sequence[ImageInput] = (),
        negative_weight: float | None = None,
        k: int | None = None,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> SearchResponse:
        """Relevance feedback: images like the positive examples and unlike the negative ones (Rocchio,
        ``mean(P) - negative_weight * mean(N)``; stored ids and/or images to upload; the examples are left out)."""
        call = Calls.search_feedback(
            positive_ids, negative_ids, positive_images, negative_images, negative_weight, k, labels, split
        )
        return parse(self._send(call), SearchResponse)

    def explain(
        self, result_ids: Sequence[int], image: ImageInput | None = None, *, query_id: int | None = None
    ) -> ExplainResponse:
        """Heat-maps of why each stored result is similar to the query (an image, or ``query_id``)."""
        return parse(self._send(explain_call(result_ids, image, query_id)), ExplainResponse)


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
            base_url=base_url, headers=auth_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> httpx.Response:
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
        return parse(await self._send(Call("GET", "/healthz")), Health)

    async def ready(self) -> Readiness:
        return parse(await self._send(Call("GET", "/readyz")), Readiness)

    async def collection(self) -> CollectionInfo:
        return parse(await self._send(Call("GET", "/v1/collection")), CollectionInfo)

    async def search(
        self,
        image: ImageInput,
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        exclude_duplicates: bool = False,
        collapse_duplicates: bool = False,
        min_score: float | None = None,
    ) -> SearchResponse:
        """``min_score``: drop results below it (-1..1); ``collapse_duplicates``: one per near-duplicate group."""
        call = Calls.search(image, k, labels, split, exclude_duplicates, collapse_duplicates, min_score)
        return parse(await self._send(call), SearchResponse)

    async def search_batch(
        self,
        images: Sequence[ImageInput],
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        min_score: float | None = None,
    ) -> BatchSearchResponse:
        return parse(await self._send(Calls.search_batch(images, k, labels, split, min_score)), BatchSearchResponse)

    async def search_vector(
        self,
        vector: Sequence[float],
        k: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        split: str | None = None,
        min_score: float | None = None,
    ) -> SearchResponse:
        return parse(await self._send(Calls.search_vector(vector, k, labels, split, min_score)), SearchResponse)

    async def classify(self, image: ImageInput) -> ClassifyResponse:
        return parse(await self._send(Calls.classify(image)), ClassifyResponse)

    async def neighbours(
        self, image_id: int, k: int | None = None, *, labels: Sequence[str] | None = None, split: str | None = None
    ) -> SearchResponse:
        return parse(await self._send(Calls.neighbours(image_id, k, labels, split)), SearchResponse)

    async def image_info(self, image_id: int) -> ImageInfo:
        return parse(await self._send(Call("GET", f"/v1/images/{int(image_id)}/info")), ImageInfo)

    async def list_images(
        self,
        limit: int | None = None,
        *,
        cursor: str | None = None,
        after: int | None = None,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> ImagePage:
        return parse(await self._send(Calls.list_images(limit, cursor, after, labels, split)), ImagePage)

    async def iter_images(
        self, *, page_size: int | None = None, labels: Sequence[str] | None = None, split: str | None = None
    ) -> AsyncIterator[ImageInfo]:
        cursor: str | None = None
        while True:
            page = await self.list_images(page_size, cursor=cursor, labels=labels, split=split)
            for image in page.images:
                yield image
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def download(self, image_id: int, *, thumbnail: bool = False) -> bytes:
        path = f"/v1/images/{int(image_id)}" + ("/thumbnail" if thumbnail else "")
        return check_status(await self._send(Call("GET", path))).content

    async def add_images(
        self,
        images: Sequence[ImageInput],
        *,
        labels: Sequence[Sequence[str] | str | None] | None = None,
        split: str | None = None,
        metadata: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    ) -> AddImagesResponse:
        return parse(await self._send(Calls.add_images(images, labels, split, metadata)), AddImagesResponse)

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
        call = Calls.edit(image_id, labels, add, remove, metadata, replace_metadata)
        return parse(await self._send(call), ImageInfo)

    async def delete_image(self, image_id: int) -> None:
        check_status(await self._send(Call("DELETE", f"/v1/images/{int(image_id)}")))

    # --- near-duplicates and the map ---------------------------------------------------------------------------
    async def duplicates(
        self, *, threshold: float | None = None, offset: int | None = None, limit: int | None = None
    ) -> DuplicatePage:
        return parse(await self._send(Calls.duplicates(threshold, offset, limit)), DuplicatePage)

    async def collection_map(self) -> CollectionMap:
        return parse(await self._send(Call("GET", "/v1/map")), CollectionMap)

    async def search_feedback(
        self,
        positive_ids: Sequence[int] = (),
        negative_ids: Sequence[int] = (),
        *,
        positive_images: Sequence[ImageInput] = (),
        negative_images: Sequence[ImageInput] = (),
        negative_weight: float | None = None,
        k: int | None = None,
        labels: Sequence[str] | None = None,
        split: str | None = None,
    ) -> SearchResponse:
        call = Calls.search_feedback(
            positive_ids, negative_ids, positive_images, negative_images, negative_weight, k, labels, split
        )
        return parse(await self._send(call), SearchResponse)

    async def explain(
        self, result_ids: Sequence[int], image: ImageInput | None = None, *, query_id: int | None = None
    ) -> ExplainResponse:
        return parse(await self._send(explain_call(result_ids, image, query_id)), ExplainResponse)
