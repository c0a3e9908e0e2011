"""Every client mistake gets a clear 4xx JSON error, and the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import AsyncIterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.helpers import API_KEY, AUTH, Fixture, async_client, class_image, png_bytes

GOOD = png_bytes(class_image(0, 0))


def corrupt_png() -> bytes:
    """Valid signature and header, garbage compressed pixel data."""
    data = bytearray(png_bytes(class_image(1, 2)))
    start = data.index(b"IDAT") + 8
    data[start : start + 200] = b"\xff" * 200
    return bytes(data)


def assert_error(response, status: int, code: str | None = None, *mentions: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    for word in mentions:
        assert word in body["error"]["message"], body
    return body


def post_image(client: TestClient, data: bytes, name: str = "q.png", **form: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/search", files={"image": (name, data, "application/octet-stream")}, data=form)


def still_serving(client: TestClient) -> None:
    assert post_image(client, GOOD, k=2).status_code == 200


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but carries (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(b"\x00" * 16)
    return head + struct.pack(">I", 16) + idat + struct.pack(">I", zlib.crc32(idat))


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"this is plain text, not an image", 415, "unsupported_image"),
        (b"", 422, "invalid_image"),
        (GOOD[: len(GOOD) // 2], 422, "invalid_image"),  # truncated PNG
        (corrupt_png(), 422, "invalid_image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415, "unsupported_image"),
    ],
    ids=["text", "zero-bytes", "truncated", "corrupt", "pdf"],
)
def test_bad_images(client: TestClient, data: bytes, status: int, code: str) -> None:
    body = assert_error(post_image(client, data), status, code, "image")
    assert "Traceback" not in body["error"]["message"]
    still_serving(client)


def test_classify_rejects_bad_images_too(client: TestClient) -> None:
    r = client.post("/v1/classify", files={"image": ("x.txt", b"hello", "text/plain")})
    assert_error(r, 415, "unsupported_image")


def test_pixel_limit_is_decided_from_the_header(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_pixels=10_000)
    # The header claims 2000 x 2000 with ~100 bytes of pixel data: decoding would fail as truncated (422), so a
    # 413 naming both numbers proves the decision was made from the header.
    body = assert_error(post_image(client, png_header_only(2000, 2000)), 413, "image_too_large", "10,000")
    assert "4,000,000" in body["error"]["message"]
    # Far past Pillow's own decompression-bomb threshold: also 413.
    assert_error(post_image(client, png_header_only(40_000, 40_000)), 413, "image_too_large")
    assert_error(post_image(client, png_bytes(Image.new("RGB", (101, 100)))), 413, "image_too_large")
    assert post_image(client, png_bytes(Image.new("RGB", (100, 100))), k=1).status_code == 200


def test_upload_over_the_size_limit_by_content_length(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_upload_bytes=10_000)
    big = png_bytes(Image.effect_noise((200, 200), 100).convert("RGB"))
    assert len(big) > 10_000
    assert_error(post_image(client, big), 413, "payload_too_large", "10,000")
    still_serving_small = post_image(client, png_bytes(class_image(1, 1), optimize=True), k=1)
    assert still_serving_small.status_code == 200


def test_upload_over_the_size_limit_while_streaming(shared_collection: Fixture) -> None:
    """No Content-Length (chunked): the body is counted as it arrives and reading stops past the limit."""
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(1000):  # 1 MB if nobody stops reading
            sent += 1000
            yield b"\0" * 1000
        yield b"\r\n--xyz--\r\n"

    async def run() -> None:
        async with async_client(shared_collection.settings(max_upload_bytes=50_000)) as client:
            headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
            r = await client.post("/v1/search", content=body(), headers=headers)
            assert "content-length" not in r.request.headers
            assert_error(r, 413, "payload_too_large", "50,000")
            ok = await client.post("/v1/search", files={"image": ("q.png", GOOD, "image/png")})
            assert ok.status_code == 200

    asyncio.run(run())
    assert sent <= 52_000, f"the server read {sent} bytes before refusing"


@pytest.mark.parametrize(
    ("files", "data", "field"),
    [
        (None, {"k": "3"}, "image"),
        ({"picture": ("q.png", GOOD, "image/png")}, {}, "image"),  # misnamed field
        ({"image": ("q.png", GOOD, "image/png")}, {"k": "many"}, "k"),
        ({"image": ("q.png", GOOD, "image/png")}, {"exclude_duplicates": "perhaps"}, "exclude_duplicates"),
    ],
    ids=["missing", "misnamed", "k-not-int", "bool"],
)
def test_missing_or_invalid_fields_name_the_field(client: TestClient, files, data, field: str) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(client.post("/v1/search", files=files, data=data), 422, "validation_error", f"'{field}'")
    assert any(d["field"] == field for d in body["error"]["details"])


def test_image_sent_as_text_field(client: TestClient) -> None:
    r = client.post("/v1/search", data={"image": "not a file"}, files={"x": ("x", b"1")})
    assert_error(r, 422, "validation_error", "'image'")


@pytest.mark.parametrize("k", ["0", "-3", "101"])
def test_k_out_of_range(client: TestClient, k: str) -> None:
    assert_error(post_image(client, GOOD, k=k), 422, "validation_error", "k=", "100")
    assert_error(client.get("/v1/images/1/neighbours", params={"k": k}), 422, "validation_error", "k=")


def test_max_k_is_configurable(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_k=3, default_k=2)
    assert_error(post_image(client, GOOD, k=4), 422, "validation_error", "3")
    assert len(post_image(client, GOOD, k=3).json()["neighbours"]) == 3


def test_unknown_label_filter(client: TestClient) -> None:
    assert_error(post_image(client, GOOD, label="purple"), 422, "unknown_label", "purple", "red")


@pytest.mark.parametrize(
    "path",
    ["/v1/images/424242", "/v1/images/424242/thumbnail", "/v1/images/424242/neighbours", "/v1/images/424242/info"],
)
def test_unknown_ids(client: TestClient, path: str) -> None:
    assert_error(client.get(path), 404, "image_not_found", "424242")


@pytest.mark.parametrize("path", ["/v1/images/abc", "/v1/images/-1", f"/v1/images/{2**70}"])
def test_invalid_ids(client: TestClient, path: str) -> None:
    assert_error(client.get(path), 422, "validation_error", "image_id")


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found", "/v1/nothing-here")
    assert_error(client.get("/v2/search"), 404, "not_found")
    assert_error(client.put("/v1/search"), 405, "method_not_allowed")
    assert_error(client.get("/static/../../etc/passwd"), 404)


def test_write_endpoints_need_the_key(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client()
    files = {"images": ("a.png", png_bytes(class_image(2, 50)), "image/png")}
    assert_error(client.post("/v1/images", files=files), 401, "missing_api_key", "X-API-Key")
    assert client.post("/v1/images", files=files).headers["www-authenticate"] == "Bearer"
    assert_error(client.post("/v1/images", files=files, headers={"X-API-Key": "wrong"}), 403, "invalid_api_key")
    wrong_bearer = {"Authorization": "Bearer wrong"}
    assert_error(client.post("/v1/images", files=files, headers=wrong_bearer), 403, "invalid_api_key")
    assert_error(client.delete("/v1/images/1"), 401, "missing_api_key")
    assert_error(client.delete("/v1/images/1", headers={"X-API-Key": API_KEY[:-1]}), 403, "invalid_api_key")
    assert client.get("/v1/images/1").status_code == 200  # nothing was deleted
    ok = client.post("/v1/images", files=files, headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 201, ok.text


def test_writes_refused_without_a_configured_key(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_key=None)
    files = {"images": ("a.png", GOOD, "image/png")}
    assert_error(client.post("/v1/images", files=files, headers=AUTH), 403, "writes_disabled", "MSIR_API_KEY")
    assert_error(client.delete("/v1/images/1"), 403, "writes_disabled", "MSIR_API_KEY")
    still_serving(client)


def test_read_requires_key(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(read_requires_key=True)
    assert_error(post_image(client, GOOD), 401, "missing_api_key")
    assert_error(client.get("/v1/collection"), 401)
    assert_error(client.get("/v1/images/1/thumbnail", headers={"X-API-Key": "nope"}), 403)
    assert client.post("/v1/search", files={"image": ("q.png", GOOD, "image/png")}, headers=AUTH).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes stay open
    assert client.get("/readyz").status_code == 200


def test_error_bodies_are_json_for_unexpected_content_types(client: TestClient) -> None:
    r = client.post("/v1/search", content=b"{}", headers={"Content-Type": "application/json"})
    assert_error(r, 422, "validation_error", "'image'")
    r = client.post(
        "/v1/search", content=io.BytesIO(b"garbage").read(), headers={"Content-Type": "multipart/form-data"}
    )
    assert r.status_code in (400, 422)
    assert "error" in r.json()
    still_serving(client)
