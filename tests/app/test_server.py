"""A real ``msir-serve`` process on 127.0.0.1 (random free port): settings from the environment, requests over
real HTTP, body limits on a real socket, and a graceful exit on SIGTERM.

Starting a server costs seconds (torch, FAISS), so these tests share one SQLite-backed server (``shared_server``,
MSIR_MAX_K=20, 1 MB body limit); the last one shuts it down with SIGTERM while a request is in flight.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.server_process import ServerNotReady
from tests.app.conftest import SHARED_SERVER_LIMIT as LIMIT
from tests.app.helpers import (
    AUTH,
    Fixture,
    LiveServer,
    class_image,
    png_bytes,
    start_server,
    stop_server,
)

QUERY = png_bytes(class_image(0, 4))


def exercise(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.post("/v1/search", files={"image": ("q.png", QUERY, "image/png")}, data={"k": "5"})
    assert r.status_code == 200, r.text
    first = r.json()["neighbours"][0]
    assert client.get(first["image_url"]).headers["content-type"] == "image/png"
    assert client.get(first["thumbnail_url"]).headers["content-type"] == "image/jpeg"
    added = client.post(
        "/v1/images", files={"images": ("n.png", png_bytes(class_image(2, 99)), "image/png")}, headers=AUTH
    )
    assert added.status_code == 201, added.text


def test_serves_over_http(shared_server: LiveServer) -> None:
    server = shared_server
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v1/collection").json()["max_k"] == 20  # the environment reached the settings
        exercise(client)
        too_many = client.post("/v1/search", files={"image": ("q.png", QUERY, "image/png")}, data={"k": "21"})
        assert too_many.status_code == 422
        page = client.get("/")
        assert page.status_code == 200 and "<title>msir" in page.text
        assert client.get("/static/app.js").status_code == 200


def test_rerank_over_http(shared_server: LiveServer) -> None:
    with httpx.Client(base_url=shared_server.url, timeout=30) as client:
        plain = client.post("/v1/search", files={"image": ("q.png", QUERY, "image/png")}, data={"k": "5"})
        assert plain.status_code == 200, plain.text
        for method in ("aqe", "dba", "kreciprocal"):
            r = client.post(
                "/v1/search", files={"image": ("q.png", QUERY, "image/png")}, data={"k": "5", "rerank": method}
            )
            assert r.status_code == 200, r.text
            neighbours = r.json()["neighbours"]
            assert len(neighbours) == 5
            assert [n["score"] for n in neighbours] == sorted((n["score"] for n in neighbours), reverse=True)
        bad = client.post("/v1/search", files={"image": ("q.png", QUERY, "image/png")}, data={"rerank": "x"})
        assert bad.status_code == 422 and "rerank" in bad.text


def test_concurrent_searches_over_http(shared_server: LiveServer) -> None:
    server = shared_server
    queries = [png_bytes(class_image(i % 3, 200 + i)) for i in range(24)]

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def one(data: bytes) -> list[int]:
                r = await client.post("/v1/search", files={"image": ("q.png", data, "image/png")}, data={"k": "6"})
                assert r.status_code == 200, r.text
                return [n["id"] for n in r.json()["neighbours"]]

            sequential = [await one(q) for q in queries]
            together = await asyncio.gather(*(one(q) for q in queries))
            return sequential, list(together)

    sequential, together = asyncio.run(run())
    assert sequential == together


def test_content_length_over_the_limit_is_refused_up_front(shared_server: LiveServer) -> None:
    server = shared_server
    big = b"\0" * (5 * LIMIT)
    r = httpx.post(f"{server.url}/v1/search", files={"image": ("big.png", big, "image/png")}, timeout=30)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    ok = httpx.post(f"{server.url}/v1/search", files={"image": ("q.png", QUERY, "image/png")}, timeout=30)
    assert ok.status_code == 200


def test_chunked_upload_over_the_limit_is_cut_off(shared_server: LiveServer) -> None:
    server = shared_server
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        while sent < 500_000_000:  # 500 MB if the server kept reading
            sent += 65536
            yield b"\0" * 65536

    try:
        r = httpx.post(
            f"{server.url}/v1/search",
            content=endless(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
            timeout=30,
        )
        assert r.status_code == 413
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server closed the connection while we were still sending: also a refusal
    # Beyond the limit, only what the kernel's socket buffers absorb gets through.
    assert sent < 20 * LIMIT, f"{sent} bytes sent before the server closed the connection"
    ok = httpx.post(f"{server.url}/v1/search", files={"image": ("q.png", QUERY, "image/png")}, timeout=30)
    assert ok.status_code == 200


def sigterm_during_a_slow_upload(server: LiveServer) -> dict[str, object]:
    """SIGTERM while a request is still uploading; returns what that request got back."""
    started = threading.Event()
    result: dict[str, object] = {}
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\nContent-Type: image/png\r\n\r\n'
    tail = b'\r\n--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--b--\r\n'

    def slow_body() -> Iterator[bytes]:
        yield head
        started.set()
        for i in range(0, len(QUERY), 256):
            time.sleep(0.05)
            yield QUERY[i : i + 256]
        yield tail

    def send() -> None:
        try:
            r = httpx.post(
                f"{server.url}/v1/search",
                content=slow_body(),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
                timeout=60,
            )
            result["status"] = r.status_code
            result["neighbours"] = len(r.json().get("neighbours", []))
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=send)
    thread.start()
    assert started.wait(10)
    time.sleep(0.1)
    server.process.terminate()
    thread.join(60)
    return result


def assert_graceful_exit(server: LiveServer) -> None:
    assert server.process.wait(30) == 0, server.output()
    log = server.output()
    assert "Shutting down" in log and "collection closed" in log, log
    assert "Traceback" not in log, log


def test_zz_sigterm_lets_the_in_flight_request_finish(shared_server: LiveServer) -> None:
    """Last in the module: stops the shared server."""
    server = shared_server
    result = sigterm_during_a_slow_upload(server)
    assert result == {"status": 200, "neighbours": 3}, (result, server.output())
    assert_graceful_exit(server)


@pytest.mark.postgres
def test_postgres_backed_server(postgres_collection: Fixture, tmp_path: Path) -> None:
    live = start_server(postgres_collection, tmp_path)
    try:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            exercise(client)
        result = sigterm_during_a_slow_upload(live)
        assert result == {"status": 200, "neighbours": 3}, (result, live.output())
        assert_graceful_exit(live)
    finally:
        stop_server(live)


def test_invalid_settings_fail_fast(sqlite_collection: Fixture, tmp_path: Path) -> None:
    with pytest.raises(ServerNotReady, match="exited with 2"):
        start_server(sqlite_collection, tmp_path, MSIR_MAX_K="0")


@pytest.mark.slow
def test_missing_collection_fails_at_startup(sqlite_collection: Fixture, tmp_path: Path) -> None:
    with pytest.raises(ServerNotReady, match="exited with 3"):
        start_server(sqlite_collection, tmp_path, MSIR_COLLECTION_DIR=str(tmp_path / "nothing-here"))


def test_milvus_backed_server(
    milvus_template: Path, checkpoint: Path, image_files: dict[str, list[Path]], tmp_path: Path
) -> None:
    """The service on a Milvus collection, in its own process: MSIR_MILVUS_URI names the milvus-lite file (which
    this test process released when it built the template, so the server can take its lock)."""
    directory = tmp_path / "collection"
    shutil.copytree(milvus_template, directory)
    moved = tmp_path / "vectors.db"
    (directory / "milvus.db").rename(moved)  # only the override finds it now
    fixture = Fixture(directory, checkpoint, None, image_files)
    # pymilvus adds seconds to the start-up (its imports), more on a busy shared machine.
    live = start_server(fixture, tmp_path, timeout_s=180, MSIR_MILVUS_URI=str(moved))
    try:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            exercise(client)
            form = {"k": "4", "label": "blue"}
            r = client.post("/v1/search", files={"image": ("q.png", QUERY, "image/png")}, data=form)
            assert r.status_code == 200 and [n["labels"] for n in r.json()["neighbours"]] == [["blue"]] * 4
            assert client.delete("/v1/images/1", headers=AUTH).status_code == 204
            neighbours = client.get("/v1/images/2/neighbours", params={"k": 50}).json()["neighbours"]
            assert 1 not in [n["id"] for n in neighbours]
            size = client.get("/v1/collection").json()["size"]
    finally:
        stop_server(live)
    assert size == 36  # 36 built, one added by exercise(), one deleted
    assert not (directory / "index.faiss").exists() and (directory / "index.milvus.json").exists()
