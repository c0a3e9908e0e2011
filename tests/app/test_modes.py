"""Accepted inputs of any mode and container go through models' preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.helpers import class_image, png_bytes

BASE = class_image(0, 5, size=40)


def _gif_animated() -> bytes:
    frames = [class_image(0, 1, 40), class_image(2, 1, 40)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _i16() -> bytes:
    ramp = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).astype(np.uint16)
    return png_bytes(Image.fromarray(ramp))


CASES = {
    "grey-L": lambda: png_bytes(BASE.convert("L")),
    "binary-1": lambda: png_bytes(BASE.convert("1")),
    "rgba": lambda: png_bytes(BASE.convert("RGBA")),
    "grey-alpha-LA": lambda: png_bytes(BASE.convert("LA")),
    "palette-P": lambda: png_bytes(BASE.convert("P", palette=Image.Palette.ADAPTIVE)),
    "cmyk-jpeg": lambda: png_bytes(BASE.convert("CMYK"), "JPEG", quality=90),
    "16-bit-png": _i16,
    "animated-gif": _gif_animated,
    "webp": lambda: png_bytes(BASE, "WEBP"),
    "bmp": lambda: png_bytes(BASE, "BMP"),
    "tiff": lambda: png_bytes(BASE, "TIFF"),
    "jpeg": lambda: png_bytes(BASE, "JPEG"),
    "tall-rgb": lambda: png_bytes(BASE.resize((13, 97))),
    "one-pixel": lambda: png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_mode_is_accepted(client: TestClient, name: str) -> None:
    data = CASES[name]()
    r = client.post("/v1/search", files={"image": (f"{name}.bin", data, "application/octet-stream")}, data={"k": 3})
    assert r.status_code == 200, r.text
    assert len(r.json()["neighbours"]) == 3


def classify(client: TestClient, data: bytes) -> list[float]:
    r = client.post("/v1/classify", files={"image": ("x", data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    return [p["probability"] for p in sorted(r.json()["predictions"], key=lambda p: p["label"])]


def test_exif_orientation_is_applied(client: TestClient) -> None:
    upright = class_image(1, 3, 40).crop((0, 0, 40, 28))  # not square: rotation changes the shape
    stored = upright.rotate(90, expand=True)  # pixels stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with "rotate 90 degrees clockwise to display"
    with_exif = png_bytes(stored, exif=exif.tobytes())
    expected = classify(client, png_bytes(upright))
    assert classify(client, with_exif) == pytest.approx(expected, abs=1e-6)
    assert classify(client, png_bytes(stored)) != pytest.approx(expected, abs=1e-6)


def test_animated_image_uses_the_first_frame(client: TestClient) -> None:
    first, second = (Image.open(io.BytesIO(_gif_animated())) for _ in range(2))
    second.seek(1)
    frame0, frame1 = png_bytes(first.convert("RGB")), png_bytes(second.convert("RGB"))
    got = classify(client, _gif_animated())
    assert got == pytest.approx(classify(client, frame0), abs=1e-6)
    assert got != pytest.approx(classify(client, frame1), abs=1e-6)
