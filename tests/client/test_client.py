"""msir_client against a real msir-serve process: every method (blocking and asyncio), errors mapped to exceptions
with the server's code and message, and a real 503 (PostgreSQL refusing connections) retried into a 200."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from indexer.metadata.queries import from_bytes
from msir_client import (
    AsyncClient,
    Client,
    Forbidden,
    NotFound,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedImage,
    ValidationFailed,
)
from tests.app.helpers import (
    API_KEY,
    CLASSES,
    Fixture,
    LiveServer,
    class_image,
    png_bytes,
    start_server,
    stop_server,
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    checkpoint: Path,
    image_files: dict[str, list[Path]],
) -> Iterator[LiveServer]:
    """A server of its own: these tests write (add, relabel, delete)."""
    directory = tmp_path_factory.mktemp("client") / "collection"
    shutil.copytree(sqlite_template, directory)
    live = start_server(Fixture(directory, checkpoint, None, image_files), directory.parent, MSIR_MAX_K="20")
    yield live
    stop_server(live)


def relabel_supported(url: str) -> bool:
    paths = httpx.get(f"{url}/openapi.json", timeout=10).json()["paths"]
    return "patch" in paths.get("/v1/images/{image_id}", {})


def test_every_method_blocking(server: LiveServer, image_files: dict[str, list[Path]]) -> None:
    query = image_files["green"][0]
    with Client(server.url, api_key=API_KEY) as msir:
        assert msir.health().status == "ok"
        assert msir.ready().status == "ready"
        info = msir.collection()
        assert info.size == 36 and info.classes == CLASSES

        found = msir.search(query, k=5)
        assert found.k == 5 and len(found.neighbours) == 5
        assert found.neighbours[0].labels == ["green"]  # the query itself is stored
        assert found.predictions and found.timings.total > 0
        assert msir.search(query.read_bytes(), k=3, labels=["red"]).neighbours[0].labels == ["red"]
        assert all(n.split == "test" for n in msir.search(query, k=3, split="test").neighbours)
        same = msir.search(query, k=3, exclude_duplicates=True)
        assert found.neighbours[0].id not in [n.id for n in same.neighbours]

        batch = msir.search_batch([image_files["red"][0], image_files["blue"][0]], k=2)
        assert [r.neighbours[0].labels for r in batch.results] == [["red"], ["blue"]]
        assert [r.filename for r in batch.results] == ["000.png", "000.png"]

        first = found.neighbours[0].id
        vector_hits = msir.search_vector(stored_vector(server, first), k=3)
        assert vector_hits.neighbours[0].id == first

        classified = msir.classify(query)
        assert sorted(p.label for p in classified.predictions) == sorted(CLASSES)

        near = msir.neighbours(first, k=4)
        assert near.query is not None and near.query.id == first
        assert first not in [n.id for n in near.neighbours]

        assert msir.image_info(first).labels == ["green"]
        assert msir.download(first) == query.read_bytes()
        assert msir.download(first, thumbnail=True)[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")

        page = msir.list_images(10, labels=["blue"])
        assert page.total == 12 and len(page.images) == 10 and page.next_after == page.images[-1].id
        rest = msir.list_images(10, cursor=page.next_cursor, labels=["blue"])
        assert len(rest.images) == 2 and rest.next_cursor is None and rest.images[0].id > page.images[-1].id
        assert all(i.labels == ["blue"] for i in page.images)
        listed = list(msir.iter_images(page_size=5, labels=["blue"], split="train"))
        assert len(listed) == 9 and len({i.id for i in listed}) == 9

        new = png_bytes(class_image(2, 555))
        added = msir.add_images([("new.png", new)], labels=[["blue"]], split="extra", metadata={"by": "client"})
        assert [a.filename for a in added.added] == ["new.png"]
        new_id = added.added[0].id
        assert msir.image_info(new_id).metadata["by"] == "client"
        again = msir.add_images([("again.png", new)], labels=["blue"])
        assert again.duplicates[0].existing_id == new_id
        if relabel_supported(server.url):  # PATCH /v1/images/{id} comes with issue #10
            assert msir.relabel(new_id, ["red"]).labels == ["red"]
            assert msir.image_info(new_id).labels == ["red"]
            edited = msir.relabel(new_id, add=["green"], remove=["red"], metadata={"checked": True})
            assert edited.labels == ["green"] and edited.metadata["checked"] is True
        msir.delete_image(new_id)
        with pytest.raises(NotFound) as missing:
            msir.image_info(new_id)
        assert missing.value.code == "image_not_found" and str(new_id) in missing.value.message


def stored_vector(server: LiveServer, image_id: int) -> list[float]:
    """The embedding the indexer stored for an image, read from the collection's SQLite file (as a user holding
    embeddings from elsewhere would send them)."""
    database = Path(server.log).parent / "collection" / "metadata.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            blob = conn.execute(sa.text("SELECT embedding FROM images WHERE id = :i"), {"i": image_id}).scalar_one()
    finally:
        engine.dispose()
    return [float(v) for v in from_bytes(blob)]


def test_every_method_async(server: LiveServer, image_files: dict[str, list[Path]]) -> None:
    query = image_files["red"][1]

    async def run() -> None:
        async with AsyncClient(server.url, api_key=API_KEY) as msir:
            assert (await msir.health()).status == "ok"
            assert (await msir.ready()).status == "ready"
            assert (await msir.collection()).classes == CLASSES
            # Concurrent searches: the server coalesces them; each gets its own answer.
            results = await asyncio.gather(*(msir.search(p, k=3) for p in image_files["red"][:4]))
            assert all(r.neighbours[0].labels == ["red"] for r in results)
            batch = await msir.search_batch([query, image_files["green"][1]], k=2)
            assert len(batch.results) == 2
            first = results[0].neighbours[0].id
            near = await msir.search_vector(stored_vector(server, first), k=2)
            assert near.neighbours[0].id == first
            assert (await msir.classify(query)).predictions
            assert (await msir.neighbours(first, k=2)).query is not None
            assert (await msir.image_info(first)).labels == ["red"]
            assert await msir.download(first) == image_files["red"][0].read_bytes()
            assert await msir.download(first, thumbnail=True)
            page = await msir.list_images(5)
            assert len(page.images) == 5
            assert len([i async for i in msir.iter_images(page_size=7, labels=["red"])]) == 12
            added = await msir.add_images([("a.png", png_bytes(class_image(0, 777)))], labels=["red"])
            new_id = added.added[0].id
            if relabel_supported(server.url):
                assert (await msir.relabel(new_id, ["green"])).labels == ["green"]
            await msir.delete_image(new_id)
            with pytest.raises(NotFound):
                await msir.delete_image(new_id)
            with pytest.raises(ValidationFailed):
                await msir.search_vector([1.0, 2.0], k=3)

    asyncio.run(run())


def test_errors_carry_the_servers_code_and_message(server: LiveServer, image_files: dict[str, list[Path]]) -> None:
    query = image_files["blue"][0]
    with Client(server.url) as anonymous:
        with pytest.raises(ValidationFailed) as too_many:
            anonymous.search(query, k=1000)
        assert too_many.value.status_code == 422 and too_many.value.code == "validation_error"
        assert "k=1000" in too_many.value.message and "MSIR_MAX_K" in too_many.value.message
        with pytest.raises(UnsupportedImage) as not_image:
            anonymous.search(("notes.txt", b"plain text, not an image"))
        assert not_image.value.code == "unsupported_image"
        with pytest.raises(Unauthorized) as no_key:
            anonymous.delete_image(1)
        assert no_key.value.code == "missing_api_key"
        with pytest.raises(NotFound):
            anonymous.neighbours(10**9)
        with pytest.raises(ValidationFailed) as bad_label:
            anonymous.list_images(labels=["purple"])
        assert bad_label.value.code == "unknown_label"
    with Client(server.url, api_key="wrong-key") as wrong, pytest.raises(Forbidden) as forbidden:
        wrong.add_images([query])
    assert forbidden.value.code == "invalid_api_key"


class Recording(httpx.HTTPTransport):
    """The real transport, noting every status code the server answered."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


@pytest.mark.postgres
def test_a_503_with_retry_after_is_retried_until_the_server_recovers(
    postgres_url: str, postgres_collection: Fixture, tmp_path: Path, image_files: dict[str, list[Path]]
) -> None:
    name = sa.make_url(postgres_collection.database_url or "").database
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")

    def allow(value: bool) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(value).lower()}'))
            if not value:
                conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
                )

    def refused() -> None:
        """Until the server's follower noticed the outage, a search may answer from rows it confirmed before
        (indexer.row_cache); from then on it answers 503 (a sync interval, 100 ms here)."""
        deadline = time.monotonic() + 30
        query = image_files["red"][0].read_bytes()
        while time.monotonic() < deadline:
            answer = httpx.post(f"{live.url}/v1/search", files={"image": ("q.png", query)}, data={"k": "3"})
            if answer.status_code == 503:
                return
            time.sleep(0.05)
        raise AssertionError("searches still answered 30 s into the outage")

    live = start_server(postgres_collection, tmp_path, MSIR_RETRY_AFTER_S="1", MSIR_SYNC_INTERVAL_MS="100")
    transport = Recording()
    try:
        with Client(live.url, transport=transport, retry=RetryPolicy(max_retries=8, max_total_s=20)) as msir:
            assert msir.search(image_files["red"][0], k=3).neighbours
            allow(False)
            refused()
            # The database comes back 2.5 s later; the client waits Retry-After (1 s) between attempts.
            timer = threading.Timer(2.5, allow, args=(True,))
            timer.start()
            started = time.monotonic()
            result = msir.search(image_files["red"][0], k=3)
            timer.join()
            assert result.neighbours[0].labels == ["red"]
            assert transport.statuses[1] == 503 and transport.statuses[-1] == 200, transport.statuses
            assert time.monotonic() - started >= 1.0  # it did wait as told
            # Bounded: with no retries left, the 503 surfaces as an exception with the server's code.
            allow(False)
            refused()
        with Client(live.url, retry=RetryPolicy(max_retries=1, max_total_s=5)) as impatient:
            with pytest.raises(ServiceUnavailable) as unavailable:
                impatient.search(image_files["red"][0], k=3)
            assert unavailable.value.code == "database_unavailable" and unavailable.value.retry_after_s == 1.0
    finally:
        allow(True)
        stop_server(live)
        admin.dispose()


def test_retry_policy_bounds() -> None:
    policy = RetryPolicy(max_retries=3, backoff_s=0.5, max_backoff_s=2.0, max_total_s=3.0)
    busy = httpx.Response(503, headers={"Retry-After": "30"})
    plain = httpx.Response(503)
    assert policy.delay(0, busy, 0.0) == 2.0  # capped
    assert policy.delay(0, plain, 0.0) == 0.5 and policy.delay(1, plain, 0.5) == 1.0  # exponential
    assert policy.delay(1, busy, 2.0) is None  # would exceed max_total_s
    assert policy.delay(3, plain, 0.0) is None  # out of retries
    assert policy.delay(0, httpx.Response(500), 0.0) is None  # only 503 is retried


def test_timeouts_raise_msir_timeout() -> None:
    from msir_client import MsirTimeout

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        Client("http://msir.invalid", transport=httpx.MockTransport(slow), timeout=0.1) as msir,
        pytest.raises(MsirTimeout),
    ):
        msir.health()


def test_min_score_on_every_search_method(server: LiveServer, image_files: dict[str, list[Path]]) -> None:
    query = image_files["blue"][3]
    with Client(server.url) as msir:
        full = msir.search(query, k=10)
        # Midway between two results: the answer's scores are rounded to 6 digits, a cut at one of them may not be.
        cut = (full.neighbours[4].score + full.neighbours[5].score) / 2
        kept = [n.id for n in full.neighbours if n.score >= cut]
        assert [n.id for n in msir.search(query, k=10, min_score=cut).neighbours] == kept
        assert [n.id for n in msir.search_batch([query], k=10, min_score=cut).results[0].neighbours] == kept
        first = full.neighbours[0].id
        vector = stored_vector(server, first)
        by_vector = msir.search_vector(vector, k=10).neighbours
        vcut = (by_vector[2].score + by_vector[3].score) / 2
        assert [n.id for n in msir.search_vector(vector, k=10, min_score=vcut).neighbours] == [
            n.id for n in by_vector[:3]
        ]
        near = msir.neighbours(first, k=10).neighbours
        ncut = (near[1].score + near[2].score) / 2
        assert [n.id for n in msir.neighbours(first, k=10, min_score=ncut).neighbours] == [n.id for n in near[:2]]
        with pytest.raises(ValidationFailed) as refused:
            msir.search(query, min_score=2.0)
        assert "min_score" in refused.value.message

    async def run() -> list[int]:
        async with AsyncClient(server.url) as amsir:
            return [n.id for n in (await amsir.search(query, k=10, min_score=cut)).neighbours]

    assert asyncio.run(run()) == kept


def test_explain_by_upload_and_by_id(server: LiveServer, image_files: dict[str, list[Path]]) -> None:
    query = image_files["red"][2]
    with Client(server.url) as msir:
        ids = [n.id for n in msir.search(query, k=3).neighbours]
        answer = msir.explain(ids, query)
        assert answer.exact and [e.result_id for e in answer.explanations] == ids
        for explanation in answer.explanations:
            assert sum(map(sum, explanation.query.values)) == pytest.approx(explanation.score, abs=1e-4)
        by_id = msir.explain(ids[1:], query_id=ids[0])
        assert [e.result_id for e in by_id.explanations] == ids[1:]
        with pytest.raises(ValueError, match="exactly one"):
            msir.explain(ids)
        with pytest.raises(NotFound):
            msir.explain([10**9], query_id=ids[0])

    async def run() -> float:
        async with AsyncClient(server.url) as amsir:
            return (await amsir.explain(ids[:1], query)).explanations[0].score

    assert asyncio.run(run()) == pytest.approx(1.0, abs=1e-4)  # the query is stored: itself first
