"""The per-client cap of admission (issue #23): one client address holds at most MSIR_MAX_PER_CLIENT running or queued
API requests; its next one is a 429 + Retry-After with a JSON error, while other clients are still served."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.limits import AdmissionMiddleware
from app.settings import Settings

CAP = 3


def held_app(release: asyncio.Event, started: list[str]) -> AdmissionMiddleware:
    async def work(request: Request) -> JSONResponse:
        started.append(request.client.host if request.client else "?")
        await release.wait()
        return JSONResponse({"ok": True})

    inner = Starlette(routes=[Route("/v1/work", work, methods=["GET", "POST"])])
    return AdmissionMiddleware(inner, max_in_flight=16, max_queued=16, queue_timeout_s=5.0, retry_after_s=7,
                               max_per_client=CAP)  # fmt: skip


def client_at(app: AdmissionMiddleware, host: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(host, 1234)), base_url="http://t")


def test_a_client_over_its_cap_gets_429_while_others_are_served() -> None:
    async def run() -> None:
        release = asyncio.Event()
        started: list[str] = []
        app = held_app(release, started)
        async with client_at(app, "10.0.0.1") as greedy, client_at(app, "10.0.0.2") as other:
            held = [asyncio.create_task(greedy.post("/v1/work", content=b"x" * 100)) for _ in range(CAP)]
            while len(started) < CAP:
                await asyncio.sleep(0.01)
            refused = await greedy.get("/v1/work")
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "7"
            body = refused.json()
            assert body["error"]["code"] == "too_many_requests" and "MSIR_MAX_PER_CLIENT" in body["error"]["message"]
            served = asyncio.create_task(other.get("/v1/work"))  # another address is not affected
            while len(started) < CAP + 1:
                await asyncio.sleep(0.01)
            release.set()
            assert (await served).status_code == 200
            assert [r.status_code for r in await asyncio.gather(*held)] == [200] * CAP
            assert (await greedy.get("/v1/work")).status_code == 200  # its requests finished: admitted again
        assert not app._per_client  # every count was given back

    asyncio.run(run())


@pytest.mark.parametrize(("value", "cap"), [(None, 24), (0, 0), (5, 5)])
def test_the_cap_defaults_to_half_of_the_slots_and_queue(value: int | None, cap: int) -> None:
    settings = Settings(_env_file=None, max_per_client=value)  # type: ignore[call-arg]
    assert settings.per_client_cap == cap
