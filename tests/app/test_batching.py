"""The micro-batcher on its own: coalescing, limits, per-request results, errors, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batching import BatcherClosed, DirectEmbedder, MicroBatcher


class Recorder:
    """A fake model: embedding = the image's mean per channel, logits = its index; records batch sizes."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.fail = fail
        self.threads: set[str] = set()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.sizes.append(len(batch))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        emb = batch.reshape(len(batch), batch.shape[1], -1).mean(axis=2).astype(np.float32)
        return emb, emb[:, :1] * 2


def image(value: int) -> np.ndarray:
    return np.full((3, 4, 4), value, dtype=np.uint8)


async def _many(batcher: MicroBatcher | DirectEmbedder, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    async def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        with batcher.track():
            await asyncio.sleep(0)  # "decoding"
            return await batcher.embed(image(i))

    await batcher.start()
    try:
        return list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        await batcher.stop()


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    model = Recorder(delay_s=0.01)
    observed: list[int] = []
    batcher = MicroBatcher(model, max_size=8, max_wait_ms=50, on_batch=lambda n, s: observed.append(n))
    results = asyncio.run(_many(batcher, 20))
    for i, (emb, logits) in enumerate(results):
        np.testing.assert_array_equal(emb, [i, i, i])
        assert logits[0] == 2 * i
    assert sum(model.sizes) == 20
    assert max(model.sizes) <= 8
    assert len(model.sizes) <= 4, model.sizes  # 20 requests in batches of up to 8
    assert observed == model.sizes
    assert model.threads == {"msir-model_0"}  # one dedicated thread runs the model


# A max wait no test could sit out: a request that waited for it would hit the guard timeout instead of finishing.
NEVER_MS = 3_600_000
GUARD_S = 60


def test_a_lone_request_does_not_wait() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_size=16, max_wait_ms=NEVER_MS)

    async def run() -> None:
        await batcher.start()
        try:
            with batcher.track():
                await asyncio.wait_for(batcher.embed(image(1)), GUARD_S)  # nothing else in flight: no wait
        finally:
            await batcher.stop()

    asyncio.run(run())
    assert model.sizes == [1]


def test_wait_is_bounded_when_announced_requests_never_come() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_size=16, max_wait_ms=100)

    async def run() -> float:
        await batcher.start()
        try:
            with batcher.track(), batcher.track():  # two announced, one arrives
                started = time.perf_counter()
                await batcher.embed(image(1))
                return time.perf_counter() - started
        finally:
            await batcher.stop()

    elapsed = asyncio.run(run())
    # It waited for the announced request (a lower bound holds on any machine), then went alone: finishing at all
    # is the bound (the announced request never comes).
    assert elapsed >= 0.09
    assert model.sizes == [1]


def test_model_errors_reach_every_request_of_the_batch_and_the_batcher_survives() -> None:
    model = Recorder(delay_s=0.01, fail=True)
    batcher = MicroBatcher(model, max_size=4, max_wait_ms=20)

    async def run() -> None:
        await batcher.start()
        try:
            results = await asyncio.gather(*(batcher.embed(image(i)) for i in range(4)), return_exceptions=True)
            assert all(isinstance(r, RuntimeError) for r in results)
            model.fail = False
            emb, _ = await batcher.embed(image(7))
            np.testing.assert_array_equal(emb, [7, 7, 7])
        finally:
            await batcher.stop()

    asyncio.run(run())


def test_stop_fails_waiting_requests() -> None:
    async def run() -> None:
        batcher = MicroBatcher(Recorder(), max_size=4, max_wait_ms=1)
        with pytest.raises(BatcherClosed):
            await batcher.embed(image(1))  # not started

    asyncio.run(run())


def test_direct_embedder_runs_one_forward_per_request() -> None:
    model = Recorder()
    results = asyncio.run(_many(DirectEmbedder(model), 5))
    assert model.sizes == [1] * 5
    for i, (emb, _) in enumerate(results):
        np.testing.assert_array_equal(emb, [i, i, i])


def test_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(Recorder(), max_size=0, max_wait_ms=1)


def test_idle_only_while_nothing_is_in_flight() -> None:
    """A request may run alone (one trip to a worker thread) only when no other request is solo, tracked, queued
    or in the model; a request arriving meanwhile takes the batched path and does not wait for the solo one."""
    model = Recorder(delay_s=0.05)
    batcher = MicroBatcher(model, max_size=16, max_wait_ms=NEVER_MS)

    async def run() -> tuple[bool, bool, bool, bool]:
        await batcher.start()
        try:
            idle_at_start = batcher.idle()
            with batcher.solo():
                idle_with_solo = batcher.idle()
                # A second request during the solo one is not kept waiting for it: with the max wait at an hour,
                # only the guard timeout could end a wait.
                with batcher.track():
                    await asyncio.wait_for(batcher.embed(image(2)), GUARD_S)
            with batcher.track():
                idle_while_tracked = batcher.idle()
            return idle_at_start, idle_with_solo, idle_while_tracked, batcher.idle()
        finally:
            await batcher.stop()

    at_start, with_solo, while_tracked, at_end = asyncio.run(run())
    assert at_start and at_end
    assert not with_solo and not while_tracked


def test_direct_embedder_is_always_idle() -> None:
    direct = DirectEmbedder(Recorder())
    with direct.solo():
        assert direct.idle()


def test_then_hook_runs_once_per_batch_in_the_model_thread() -> None:
    """The service searches a whole batch's embeddings in one call: the hook sees every request with a context,
    in the model thread, and each request gets its own result (requests without a context get None)."""
    calls: list[tuple[int, str]] = []

    def then(embeddings: np.ndarray, contexts: list[object]) -> list[object]:
        calls.append((len(contexts), threading.current_thread().name))
        return [(ctx, float(e[0])) for e, ctx in zip(embeddings, contexts, strict=True)]

    model = Recorder(delay_s=0.02)
    batcher = MicroBatcher(model, max_size=8, max_wait_ms=200, then=then)

    async def run() -> list[object]:
        async def one(i: int) -> object:
            with batcher.track():
                await asyncio.sleep(0)
                _, _, extra = await batcher.embed_then(image(i), None if i == 3 else f"q{i}")
                return extra

        await batcher.start()
        try:
            return list(await asyncio.gather(*(one(i) for i in range(6))))
        finally:
            await batcher.stop()

    extras = asyncio.run(run())
    assert extras == [(f"q{i}", float(i)) if i != 3 else None for i in range(6)]
    assert sum(n for n, _ in calls) == 5 and len(calls) == len(model.sizes)
    assert {name for _, name in calls} == {"msir-model_0"}


def test_direct_embedder_runs_the_hook_too() -> None:
    direct = DirectEmbedder(Recorder(), then=lambda e, c: [("done", c[0]) for _ in c])
    _, _, extra = asyncio.run(direct.embed_then(image(4), "ctx"))
    assert extra == ("done", "ctx")
