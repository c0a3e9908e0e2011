"""The one preprocessing path: every Pillow mode, EXIF orientation, limits, resize policies."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from models import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessSpec,
    UnsupportedImageError,
    normalize,
    open_image,
    original_size,
    preprocess,
    to_uint8,
)


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


SPEC3 = PreprocessSpec.for_dataset("cifar10", 32)
SPEC1 = PreprocessSpec.for_dataset("fashion-mnist", 28)


@pytest.mark.parametrize(
    "img",
    [
        Image.new("L", (40, 30), 128),
        Image.new("RGB", (40, 30), (10, 200, 30)),
        Image.new("RGBA", (40, 30), (10, 200, 30, 128)),
        Image.new("P", (40, 30), 3),
        Image.new("CMYK", (40, 30), (0, 255, 0, 0)),
        Image.new("1", (40, 30), 1),
        Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50),  # 16-bit grey
    ],
    ids=["L", "RGB", "RGBA", "P", "CMYK", "1", "I;16"],
)
@pytest.mark.parametrize("spec", [SPEC3, SPEC1], ids=["rgb", "grey"])
def test_every_mode_becomes_the_model_input(img: Image.Image, spec: PreprocessSpec) -> None:
    arr = to_uint8(img, spec)
    assert arr.dtype == np.uint8
    assert arr.shape == (spec.channels, *spec.image_size)
    x = preprocess(img, spec)
    assert x.dtype == torch.float32 and x.shape == arr.shape
    assert torch.isfinite(x).all()


def test_sixteen_bit_uses_the_images_own_range() -> None:
    img = Image.fromarray((np.linspace(1000, 3000, 32 * 32).reshape(32, 32)).astype(np.uint16))
    assert img.mode.startswith("I")
    arr = to_uint8(img, PreprocessSpec(image_size=32, channels=1, mean=(0.5,), std=(0.5,)))
    assert arr.min() == 0 and arr.max() == 255


def test_rgba_transparent_pixels_are_white() -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    arr = to_uint8(img, PreprocessSpec(image_size=8))
    assert (arr == 255).all()


def test_exif_orientation_is_applied() -> None:
    # A 40x20 landscape image saved with orientation 6 (rotate 90° CW to display) is portrait when opened.
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    opened = open_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert opened.size == (20, 40)
    # After a 90° clockwise turn the left band is on top.
    top = np.asarray(opened)[:5].mean(axis=(0, 1))
    assert top[2] > 150 and top[0] < 100


def test_animated_gif_gives_first_frame() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (16, 16), c) for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    img = open_image(buf.getvalue())
    assert img.size == (16, 16)
    assert to_uint8(img, PreprocessSpec(image_size=16))[:, 8, 8].tolist() == [255, 0, 0]


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(Image.new("L", (100, 100)))
    with pytest.raises(ImageTooLargeError, match="10,000 pixels exceeds the limit of 9,999"):
        open_image(data, max_pixels=9_999)
    assert open_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image format"),
    ],
)
def test_bad_bytes_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        open_image(data, name="upload.jpg")


def test_unknown_format_has_its_own_type() -> None:
    with pytest.raises(UnsupportedImageError):
        open_image(b"GIF89a but not really" * 3)


def test_truncated_image_fails_at_open() -> None:
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        open_image(data[: len(data) // 2])


def test_missing_file_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImageDecodeError, match="not found"):
        open_image(tmp_path / "nope.png")


@pytest.mark.parametrize("policy", ["crop", "pad", "stretch"])
def test_resize_policies_keep_target_shape(policy: str) -> None:
    spec = PreprocessSpec(image_size=(20, 30), resize=policy)  # type: ignore[arg-type]
    arr = to_uint8(Image.new("RGB", (300, 200), (0, 0, 0)), spec)
    assert arr.shape == (3, 20, 30)


def test_crop_keeps_the_centre_and_pad_keeps_everything() -> None:
    # A wide image, white in the middle third: crop to a square keeps mostly white; pad keeps the borders.
    img = Image.new("L", (90, 30), 0)
    img.paste(255, (30, 0, 60, 30))
    crop = to_uint8(img, PreprocessSpec(image_size=30, channels=1, resize="crop", mean=(0.5,), std=(0.5,)))
    pad = to_uint8(img, PreprocessSpec(image_size=30, channels=1, resize="pad", mean=(0.5,), std=(0.5,)))
    assert crop.mean() > 250
    assert pad[0, 15].min() < 5 and pad[0, 15].max() > 250  # black-white-black row
    assert pad[0, 0, 15] == 128  # padding filled with the mean (normalises to 0)


def test_normalize_matches_formula_and_stays_on_device() -> None:
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    y = normalize(x, SPEC3)
    mean = torch.tensor(SPEC3.mean).view(1, 3, 1, 1)
    std = torch.tensor(SPEC3.std).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (x.float() / 255 - mean) / std)
    with pytest.raises(TypeError):
        normalize(x.float(), SPEC3)


def test_spec_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="one value per channel"):
        PreprocessSpec(image_size=8, channels=1, mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="no statistics"):
        PreprocessSpec.for_dataset("imagenet-22k", 8)
    spec = PreprocessSpec.for_dataset("cifar10", (24, 32), resize="pad")
    again = PreprocessSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.cache_key() == spec.cache_key()
    assert PreprocessSpec.for_dataset("cifar10", 24).cache_key() != spec.cache_key()
    grey = PreprocessSpec.for_dataset("imagenet", 28, channels=1)
    assert grey.channels == 1 and len(grey.mean) == 1


def _noise_jpeg(width: int, height: int, mode: str = "RGB", **save: object) -> bytes:
    rng = np.random.default_rng(7)
    shape = (height, width) if mode == "L" else (height, width, 3)
    return encode(Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).convert(mode), "JPEG", **save)


def test_corrupt_jpeg_data_is_an_error() -> None:
    # 200 bytes overwritten in the entropy-coded data: Pillow decodes garbage without complaint, strict libjpeg not.
    data = bytearray(_noise_jpeg(256, 256))
    middle = len(data) // 2
    data[middle : middle + 200] = bytes(200)
    with Image.open(io.BytesIO(bytes(data))) as lenient:
        lenient.load()  # what the service used to accept
    with pytest.raises(ImageDecodeError, match="Corrupt JPEG data"):
        open_image(bytes(data), name="bad.jpg")


def test_corrupt_cmyk_jpeg_is_an_error_and_good_cmyk_keeps_pillows_conversion() -> None:
    good = _noise_jpeg(64, 48, "CMYK")
    with Image.open(io.BytesIO(good)) as ref:
        ref.load()
        expected = np.asarray(ImageOps.exif_transpose(ref))
    opened = open_image(good)
    assert opened.mode == "CMYK" and np.array_equal(np.asarray(opened), expected)
    bad = bytearray(good)
    bad[len(bad) // 2 : len(bad) // 2 + 100] = bytes(100)
    with pytest.raises(ImageDecodeError):
        open_image(bytes(bad))


def test_large_jpeg_is_decoded_at_a_reduced_dct_scale_no_smaller_than_asked() -> None:
    data = _noise_jpeg(1600, 1200)
    full = open_image(data)
    assert full.size == (1600, 1200) and original_size(full) == (1600, 1200)
    reduced = open_image(data, min_size=150)
    assert reduced.size == (200, 150)  # 1/8: the largest factor keeping both sides >= 150
    assert original_size(reduced) == (1600, 1200)
    assert open_image(data, min_size=700).size == (1000, 750)  # 5/8: 4/8 would make the height 600


def test_reduced_decoding_keeps_exif_orientation_and_grey() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    rotated = open_image(_noise_jpeg(800, 400, exif=exif.tobytes()), min_size=50)
    assert rotated.size == (50, 100) and original_size(rotated) == (400, 800)
    grey = open_image(_noise_jpeg(640, 480, "L"), min_size=60)
    assert grey.mode == "L" and grey.size == (80, 60)
