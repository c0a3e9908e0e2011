"""Concurrent requests: same answers as one by one; a write during reads loses nothing and breaks nothing."""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np

from tests.app.helpers import AUTH, CLASSES, PER_CLASS, Fixture, async_client, class_image, png_bytes


async def _search(client: httpx.AsyncClient, data: bytes, k: int = 5) -> dict:
    r = await client.post("/v1/search", files={"image": ("q.png", data, "image/png")}, data={"k": str(k)})
    assert r.status_code == 200, r.text
    return r.json()


def _batches(metrics: str) -> tuple[float, float]:
    """(forward passes, images) from the micro-batch size histogram."""
    count = re.search(r"^msir_inference_batch_size_count (\S+)$", metrics, re.M)
    total = re.search(r"^msir_inference_batch_size_sum (\S+)$", metrics, re.M)
    assert count and total, metrics
    return float(count.group(1)), float(total.group(1))


def test_100_concurrent_searches_match_sequential(any_collection: Fixture) -> None:
    queries = [png_bytes(class_image(c, 60 + i)) for c in range(len(CLASSES)) for i in range(5)]
    queries = (queries * 7)[:100]

    async def run() -> None:
        # Admission control would shed part of 100 requests at once (tests/app/test_edge.py tests that); here every
        # request must run.
        settings = any_collection.settings(batch_max_size=16, batch_max_wait_ms=5, max_in_flight=200)
        async with async_client(settings) as client:
            one_by_one = [await _search(client, q) for q in queries]
            passes0, images0 = _batches((await client.get("/metrics")).text)
            together = await asyncio.gather(*(_search(client, q) for q in queries))
            passes1, images1 = _batches((await client.get("/metrics")).text)
        for a, b in zip(one_by_one, together, strict=True):
            assert [n["id"] for n in a["neighbours"]] == [n["id"] for n in b["neighbours"]]
            np.testing.assert_allclose(
                [n["score"] for n in a["neighbours"]], [n["score"] for n in b["neighbours"]], atol=1e-5
            )
            np.testing.assert_allclose(
                [p["probability"] for p in a["predictions"]], [p["probability"] for p in b["predictions"]], atol=1e-5
            )
        assert images1 - images0 == 100
        # Micro-batching coalesced the concurrent requests into fewer forward passes.
        assert passes1 - passes0 < 100, (passes1 - passes0, images1 - images0)

    asyncio.run(run())


def test_write_during_concurrent_reads(any_collection: Fixture) -> None:
    new = [png_bytes(class_image(i % 3, 500 + i)) for i in range(6)]
    queries = [png_bytes(class_image(i % 3, 80 + i)) for i in range(60)]

    async def run() -> None:
        async with async_client(any_collection.settings(max_in_flight=200)) as client:

            async def write() -> dict:
                await asyncio.sleep(0.01)
                files = [("images", (f"new{i}.png", data, "image/png")) for i, data in enumerate(new)]
                labels = [CLASSES[i % 3] for i in range(len(new))]
                r = await client.post("/v1/images", files=files, data={"labels": labels}, headers=AUTH)
                assert r.status_code == 201, r.text
                gone = await client.delete("/v1/images/1", headers=AUTH)
                assert gone.status_code == 204
                return r.json()

            results = await asyncio.gather(write(), *(_search(client, q, k=8) for q in queries))
            added = results[0]
            for body in results[1:]:  # every read succeeded with a full, well-formed answer
                assert len(body["neighbours"]) == 8
                assert all(n["labels"] for n in body["neighbours"])
            ids = [a["id"] for a in added["added"]]
            assert len(ids) == len(new)
            assert (await client.get("/v1/collection")).json()["size"] == 3 * PER_CLASS + len(new) - 1
            for image_id, data in zip(ids, new, strict=True):
                found = await _search(client, data, k=1)
                assert found["neighbours"][0]["id"] == image_id
                assert found["neighbours"][0]["score"] > 0.9999
            assert (await client.get("/v1/images/1")).status_code == 404

    asyncio.run(run())
