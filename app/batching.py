"""Micro-batching: concurrent embedding requests share one forward pass.

Each request hands in one preprocessed ``uint8 [C, H, W]`` image and awaits its own row of the result. A single
worker task collects requests into a batch of at most ``max_size`` and runs the model once, in a dedicated thread
so the event loop never blocks. The first request of a batch waits at most ``max_wait_ms`` for others, and only
while more requests are known to be on their way (:meth:`MicroBatcher.track`), so a lone client pays no wait.
Requests that queue up while a batch runs form the next batch without any wait.

With ``then`` (a batch hook), the same trip to the model thread also does the follow-up work of every request that
brought a context (:meth:`MicroBatcher.embed_then`): the service searches all of a batch's embeddings in one FAISS
call, which costs about as much as a single query's search.

A request that finds nothing else in flight (:meth:`MicroBatcher.idle`) need not come here at all: the service
then runs its decode, forward pass and search in one trip to a worker thread (:meth:`MicroBatcher.solo` marks it,
so requests arriving meanwhile take the batched path instead of a second solo one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

logger = logging.getLogger(__name__)

# fn(batch uint8 [B, C, H, W]) -> (embeddings float32 [B, D], logits float32 [B, C])
BatchFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# then(embeddings of the requests with a context [n, D], their contexts) -> one result per such request
ThenFn = Callable[[np.ndarray, list[Any]], list[Any]]
Result = tuple[np.ndarray, np.ndarray, Any]


@dataclass
class _Request:
    image: np.ndarray
    future: asyncio.Future[Result]
    context: Any = None
    queued_at: float = field(default_factory=time.perf_counter)


class BatcherClosed(RuntimeError):
    """The batcher was stopped (server shutting down) before the request ran."""


class MicroBatcher:
    """Coalesce concurrent single-image embedding requests into batched forward passes."""

    def __init__(
        self,
        fn: BatchFn,
        max_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int, float], None] | None = None,
        then: ThenFn | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.fn = fn
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch  # (batch size, seconds in the model) -> metrics
        self.then = then
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: the model runs one batch at a time, with all of torch's intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="msir-model")
        self._inflight = 0
        self._solo = 0
        self._busy = False  # a batch is in the model thread

    def idle(self) -> bool:
        """Nothing in flight: no solo request, no tracked one, nothing queued or in the model."""
        return not (self._solo or self._inflight or self._busy or (self._queue is not None and not self._queue.empty()))

    @contextlib.contextmanager
    def solo(self) -> Iterator[None]:
        """Mark a request that runs its forward pass itself (see :meth:`idle`); it is not waited for."""
        self._solo += 1
        try:
            yield
        finally:
            self._solo -= 1

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="msir-microbatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                request = self._queue.get_nowait()
                if not request.future.done():
                    request.future.set_exception(BatcherClosed("server is shutting down"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Mark a request that will call :meth:`embed` soon (while it decodes), so a batch waits for it."""
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1

    async def embed(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embedding and logits of one ``uint8 [C, H, W]`` image."""
        embedding, logits, _ = await self.embed_then(image, None)
        return embedding, logits

    async def embed_then(self, image: np.ndarray, context: Any) -> Result:
        """Embedding, logits and ``then``'s result for ``context`` (None without a context or a hook)."""
        if self._queue is None:
            raise BatcherClosed("micro-batcher is not running")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(image, future, context))
        return await future

    def _call(self, images: np.ndarray, contexts: list[Any]) -> tuple[np.ndarray, np.ndarray, list[Any], float]:
        """The model thread's work for one batch: forward pass, then the hook on the requests with a context."""
        started = time.perf_counter()
        embeddings, logits = self.fn(images)
        forward_s = time.perf_counter() - started
        extras: list[Any] = [None] * len(contexts)
        chosen = [i for i, c in enumerate(contexts) if c is not None]
        if self.then is not None and chosen:
            for i, result in zip(chosen, self.then(embeddings[chosen], [contexts[i] for i in chosen]), strict=True):
                extras[i] = result
        return embeddings, logits, extras, forward_s

    async def _collect(self, queue: asyncio.Queue[_Request]) -> list[_Request]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            # Wait only for requests known to be coming (tracked and not yet queued).
            expected = self._inflight - len(batch)
            remaining = deadline - loop.time()
            if expected <= 0 or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [r for r in await self._collect(self._queue) if not r.future.done()]
            if not batch:
                continue
            images = np.stack([r.image for r in batch])
            self._busy = True
            try:
                embeddings, logits, extras, elapsed = await loop.run_in_executor(
                    self._executor, self._call, images, [r.context for r in batch]
                )
            except asyncio.CancelledError:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(BatcherClosed("server is shutting down"))
                raise
            except Exception as exc:  # the model failed: every request of this batch gets the error
                logger.exception("batch of %d failed", len(batch))
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            finally:
                self._busy = False
            if self.on_batch is not None:
                self.on_batch(len(batch), elapsed)
            for i, r in enumerate(batch):
                if not r.future.done():
                    r.future.set_result((embeddings[i], logits[i], extras[i]))


class DirectEmbedder:
    """The same interface without batching: each request runs its own forward pass in the blocking pool."""

    def __init__(
        self,
        fn: BatchFn,
        limiter: anyio.CapacityLimiter | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        then: ThenFn | None = None,
    ) -> None:
        self.fn = fn
        self.limiter = limiter
        self.on_batch = on_batch
        self.then = then

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def idle(self) -> bool:
        return True  # nothing to coalesce with: every request may run in one trip to a worker thread

    @contextlib.contextmanager
    def solo(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        yield

    async def embed(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embedding, logits, _ = await self.embed_then(image, None)
        return embedding, logits

    async def embed_then(self, image: np.ndarray, context: Any) -> Result:
        def call() -> tuple[Result, float]:
            started = time.perf_counter()
            embeddings, logits = self.fn(image[None])
            forward_s = time.perf_counter() - started
            extra = self.then(embeddings, [context])[0] if self.then is not None and context is not None else None
            return (embeddings[0], logits[0], extra), forward_s

        result, forward_s = await anyio.to_thread.run_sync(call, limiter=self.limiter)
        if self.on_batch is not None:
            self.on_batch(1, forward_s)
        return result
