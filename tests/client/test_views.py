"""The client's methods for the whole-collection views and steered searches: duplicates, the map, feedback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from msir_client import AsyncClient, Client
from tests.app.helpers import CLASSES, PER_CLASS, LiveServer


def test_duplicates_and_map(shared_server: LiveServer, image_files: dict[str, list[Path]]) -> None:
    query = image_files["blue"][0]
    with Client(shared_server.url) as msir:
        page = msir.duplicates(threshold=0.5, limit=2)
        raw = httpx.get(f"{shared_server.url}/v1/duplicates", params={"threshold": 0.5, "limit": 2}).json()
        assert page.model_dump(mode="json") == raw and page.threshold == 0.5
        assert page.total_groups >= 1 and len(page.groups) <= 2
        collapsed = msir.search(query, k=3, collapse_duplicates=True)
        assert collapsed.k == 3 and len(collapsed.neighbours) <= 3
        mapped = msir.collection_map()
        assert mapped.method == "pca" and mapped.total == len(mapped.points) == len(CLASSES) * PER_CLASS
        plain = msir.search(query, k=3).neighbours
        first, second = plain[0].id, plain[1].id
        steered = msir.search_feedback([first], [second], k=4, negative_weight=0.5)
        raw = httpx.post(
            f"{shared_server.url}/v1/search/feedback",
            data={"positive_id": str(first), "negative_id": str(second), "k": "4",
                  "negative_weight": "0.5"},
        ).json()  # fmt: skip
        assert [n.id for n in steered.neighbours] == [n["id"] for n in raw["neighbours"]]
        uploaded = msir.search_feedback(positive_images=[query], negative_images=[image_files["red"][0]], k=3)
        assert len(uploaded.neighbours) == 3

    async def run() -> None:
        async with AsyncClient(shared_server.url) as msir:
            assert (await msir.duplicates(threshold=0.5, limit=2)) == page
            assert (await msir.collection_map()) == mapped
            again = await msir.search_feedback([first], [second], k=4, negative_weight=0.5)
            assert [n.id for n in again.neighbours] == [n.id for n in steered.neighbours]

    asyncio.run(run())
