"""Preprocessing: the one way any image becomes a model input.

It is part of the model contract (stored in every checkpoint), so training evaluation, the indexer and the service
cannot drift apart. Work is split in two on purpose: :func:`to_uint8` (decode-side, CPU, in worker processes and
decode caches) and :func:`normalize` (on whatever device the batch already lives, GPU included).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import warnings
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import simplejpeg
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

ResizePolicy = Literal["crop", "pad", "stretch"]
ImageSource = str | Path | bytes | BinaryIO

# Usual per-dataset statistics (in [0, 1] units).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class ImageDecodeError(ValueError):
    """An input that is not a decodable image within limits; the message names the source and the reason."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than allowed (or a decompression bomb), decided from the header before decoding."""


class UnsupportedImageError(ImageDecodeError):
    """Bytes that no Pillow decoder recognises as an image format."""


class PreprocessSpec(BaseModel):
    """How an image is turned into the model's input tensor (serialised into every checkpoint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: tuple[int, int]  # (height, width)
    channels: Literal[1, 3] = 3
    resize: ResizePolicy = "crop"
    mean: tuple[float, ...] = DATASET_STATS["imagenet"][0]
    std: tuple[float, ...] = DATASET_STATS["imagenet"][1]

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, v: object) -> object:
        if isinstance(v, int):
            return (v, v)
        return v

    @model_validator(mode="after")
    def _check(self) -> PreprocessSpec:
        if min(self.image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean/std need one value per channel ({self.channels}), got mean={self.mean} std={self.std}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        return self

    @classmethod
    def for_dataset(
        cls,
        dataset: str,
        image_size: int | tuple[int, int],
        channels: int | None = None,
        resize: ResizePolicy = "crop",
    ) -> PreprocessSpec:
        """Spec with the usual statistics of ``dataset`` (``cifar10``, ``fashion-mnist``, ``imagenet``...)."""
        try:
            mean, std = DATASET_STATS[dataset]
        except KeyError:
            raise ValueError(f"no statistics for dataset {dataset!r}; known: {sorted(DATASET_STATS)}") from None
        if channels is not None and channels != len(mean):
            # Grey statistics for a colour model (or the reverse): average / replicate.
            m, s = float(np.mean(mean)), float(np.mean(std))
            mean, std = (m,) * channels, (s,) * channels
        return cls(image_size=image_size, channels=len(mean), resize=resize, mean=mean, std=std)  # type: ignore[arg-type]

    def cache_key(self) -> str:
        """Short stable hash: decode caches are keyed by it."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


JPEG_SOI = b"\xff\xd8\xff"
# Key of ``Image.info`` where :func:`open_image` records the stored size of an image it decoded at a reduced scale.
ORIGINAL_SIZE = "msir.original_size"


def open_image(
    source: ImageSource, max_pixels: int | None = None, name: str | None = None, min_size: int | None = None
) -> Image.Image:
    """Decode an image fully, safely, strictly and upright.

    The pixel count is checked from the header *before* any decoding (decompression bombs), the whole file is
    decoded here so truncated files fail now rather than mid-batch, EXIF orientation is applied and animated
    images give their first frame. JPEGs are decoded by libjpeg-turbo through simplejpeg in strict mode: the
    "Corrupt JPEG data" warnings that Pillow ignores (garbage pixels decoded without complaint) are errors here.
    ``min_size``: the caller only needs an image whose sides are at least this long (a model input), so a large
    JPEG is decoded at a reduced DCT scale (1/2, 1/4, 1/8) no smaller than that; ``original_size(img)`` gives
    the stored size. Every failure is an :class:`ImageDecodeError` naming the source.
    """
    label = name or (str(source) if isinstance(source, str | Path) else "<upload>")
    try:
        data = _read_source(source, label)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"{label}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                        f"{max_pixels:,} pixels"
                    )
                if data.startswith(JPEG_SOI) and img.format in ("JPEG", "MPO"):
                    return _open_jpeg(data, img, min_size)
                img.seek(0)
                img.load()
                return ImageOps.exif_transpose(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{label}: refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError(f"{label}: not an image format Pillow can decode") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{label}: file not found") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageDecodeError(f"{label}: corrupt or truncated image ({exc})") from exc


def original_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the stored image, before any reduced-scale decoding by :func:`open_image`."""
    size = img.info.get(ORIGINAL_SIZE)
    return (int(size[0]), int(size[1])) if size else img.size


def _read_source(source: ImageSource, label: str) -> bytes:
    if isinstance(source, str | Path):
        data = Path(source).read_bytes()
    elif isinstance(source, bytes):
        data = source
    else:
        data = source.read()
    if not data:
        raise ImageDecodeError(f"{label}: empty file (0 bytes)")
    return data


def _open_jpeg(data: bytes, header: Image.Image, min_size: int | None) -> Image.Image:
    """Strict libjpeg-turbo decoding of a JPEG whose header Pillow has read (and the pixel limit passed).

    Grey and colour JPEGs are decoded by simplejpeg, at a reduced DCT scale when ``min_size`` allows; CMYK (and
    Adobe-inverted CMYK) keeps Pillow's conversion, after simplejpeg has checked the data strictly. EXIF
    orientation is applied from the original header, exactly as for the other formats.
    """
    if header.mode not in ("L", "RGB"):
        simplejpeg.decode_jpeg(data, colorspace="CMYK", strict=True)  # raises ValueError on corrupt data
        header.load()
        return ImageOps.exif_transpose(header)
    # Either side may end up as the height after the EXIF rotation: both must stay >= min_size.
    side = min_size or 0
    pixels = simplejpeg.decode_jpeg(
        data,
        colorspace="GRAY" if header.mode == "L" else "RGB",
        min_height=side,
        min_width=side,
        strict=True,
    )
    img = Image.fromarray(pixels[:, :, 0] if header.mode == "L" else pixels)
    img.info.update(header.info)  # exif, xmp (orientation), icc_profile, dpi... as Pillow's own decoding keeps
    if img.size != header.size:
        w, h = header.size
        # Orientations 5-8 turn the image by 90 degrees: the stored sides swap too.
        swapped = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
        img.info[ORIGINAL_SIZE] = (h, w) if swapped else (w, h)
    upright = ImageOps.exif_transpose(img)
    return upright


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to ``L`` (channels=1) or ``RGB`` (channels=3)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit-depth (medical) images carry arbitrary windowing: stretch each image's own range to 8 bits,
        # which is what a viewer shows, instead of assuming the full 16-bit range.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif mode == "P" or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent pixels composited over white: what a person sees in a browser.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if channels == 1:
        return img if img.mode == "L" else img.convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_to(img: Image.Image, size: tuple[int, int], policy: ResizePolicy, fill: tuple[int, ...]) -> Image.Image:
    """Resize to ``size`` (H, W): keep the aspect ratio then centre-crop (``crop``) or pad (``pad``), or stretch."""
    target_h, target_w = size
    w, h = img.size
    if (h, w) == (target_h, target_w):
        return img
    resample = Image.Resampling.BICUBIC
    if policy == "stretch":
        return img.resize((target_w, target_h), resample)
    scale = (max if policy == "crop" else min)(target_w / w, target_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((new_w, new_h), resample)
    if policy == "crop":
        left, top = (new_w - target_w) // 2, (new_h - target_h) // 2
        return img.crop((left, top, left + target_w, top + target_h))
    canvas = Image.new(img.mode, (target_w, target_h), fill if img.mode == "RGB" else fill[0])
    canvas.paste(img, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def to_uint8(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """PIL image of any mode -> ``uint8`` array ``(C, H, W)`` per ``spec`` (no normalisation yet)."""
    img = to_mode(img, spec.channels)
    # Padding is filled with the mean colour so that it normalises to zero.
    fill = tuple(round(m * 255) for m in spec.mean)
    img = resize_to(img, spec.image_size, spec.resize, fill)
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy must not alias Pillow's buffer
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def normalize(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """``uint8 [..., C, H, W]`` -> normalised ``float32`` on the same device."""
    if x.dtype != torch.uint8:
        raise TypeError(f"normalize expects a uint8 tensor, got {x.dtype}")
    if x.shape[-3] != spec.channels:
        raise ValueError(f"expected {spec.channels} channels at dim -3, got shape {tuple(x.shape)}")
    mean = torch.tensor(spec.mean, device=x.device, dtype=torch.float32).view(-1, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(spec.std, device=x.device, dtype=torch.float32).view(-1, 1, 1) * 255.0)
    return (x.float() - mean) * inv_std


def preprocess(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """PIL image -> normalised ``float32 [C, H, W]`` tensor: what the model sees."""
    return normalize(torch.from_numpy(to_uint8(img, spec)), spec)
