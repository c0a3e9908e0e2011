"""Batched on-device augmentation: every sample draws its own random transform, with no per-sample Python
loop.

Operates on ``[B, C, H, W]`` batches where they already live (GPU or CPU). All randomness comes from one
``torch.Generator`` on the batch's device, so a run (and a resumed run, which restores the generator state) is
reproducible. Float batches are expected to be normalised already, so the zeros that padding, rotation corners
and cutout leave behind are the dataset's mean colour; uint8 batches get black instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from training.config import AugmentConfig


def _coin(p: float, n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """``[n]`` bool: True with probability ``p``."""
    return torch.rand(n, generator=gen, device=device) < p


def random_flip(x: Tensor, p: float, dim: int, gen: torch.Generator) -> Tensor:
    """Flip each sample along ``dim`` (-1 horizontal, -2 vertical) with probability ``p``; exact for any
    dtype."""
    if p <= 0:
        return x
    flip = _coin(p, x.shape[0], gen, x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(dim), x)


def random_rotate(x: Tensor, degrees: float, p: float, gen: torch.Generator) -> Tensor:
    """Rotate each sample by a uniform angle in ``[-degrees, degrees]`` (bilinear, zeros outside), prob
    ``p``."""
    if degrees <= 0 or p <= 0:
        return x
    b, _, h, w = x.shape
    angle = (torch.rand(b, generator=gen, device=x.device) * 2 - 1) * math.radians(degrees)
    chosen = _coin(p, b, gen, x.device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates per axis; the h/w factors keep the rotation rigid on non-square
    # images (a pixel-space rotation expressed in normalised coordinates).
    theta = torch.stack(
        [
            torch.stack([cos, -sin * h / w, torch.zeros_like(cos)], dim=1),
            torch.stack([sin * w / h, cos, torch.zeros_like(cos)], dim=1),
        ],
        dim=1,
    )
    src = x if x.is_floating_point() else x.float()
    grid = F.affine_grid(theta.to(src.dtype), list(src.shape), align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if not x.is_floating_point():
        out = out.round_().clamp_(0, 255).to(x.dtype)
    return torch.where(chosen.view(-1, 1, 1, 1), out, x)


def random_crop(x: Tensor, padding: int, gen: torch.Generator) -> Tensor:
    """Zero-pad by ``padding`` then crop back to ``H x W`` at a random offset per sample (CIFAR recipe)."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chan, rows, cols]


def random_cutout(x: Tensor, size: int, p: float, gen: torch.Generator) -> Tensor:
    """Zero a ``size x size`` square centred anywhere in the image (it may hang over the border), prob
    ``p``."""
    if size <= 0 or p <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), generator=gen, device=x.device).view(b, 1, 1)
    cx = torch.randint(0, w, (b,), generator=gen, device=x.device).view(b, 1, 1)
    chosen = _coin(p, b, gen, x.device).view(b, 1, 1)
    yy = torch.arange(h, device=x.device).view(1, h, 1)
    xx = torch.arange(w, device=x.device).view(1, 1, w)
    half = size // 2
    hole = (yy >= cy - half) & (yy < cy - half + size) & (xx >= cx - half) & (xx < cx - half + size) & chosen
    return x.masked_fill(hole.unsqueeze(1), 0)


class BatchAugment:
    """The configured augmentation pipeline: flips, rotation, random crop, cutout (in that order)."""

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator) -> None:
        self.cfg = cfg
        self.generator = generator

    @property
    def enabled(self) -> bool:
        c = self.cfg
        return bool(
            c.hflip > 0
            or c.vflip > 0
            or (c.rotate_degrees > 0 and c.rotate_p > 0)
            or c.crop_padding > 0
            or (c.cutout > 0 and c.cutout_p > 0)
        )

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"augmentation expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
        c, g = self.cfg, self.generator
        x = random_flip(x, c.hflip, -1, g)
        x = random_flip(x, c.vflip, -2, g)
        x = random_rotate(x, c.rotate_degrees, c.rotate_p, g)
        x = random_crop(x, c.crop_padding, g)
        return random_cutout(x, c.cutout, c.cutout_p, g)


__all__ = ["BatchAugment", "random_crop", "random_cutout", "random_flip", "random_rotate"]
