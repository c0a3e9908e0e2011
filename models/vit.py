"""Multi-scale ViT (Alqahtani et al. 2025, paper 003 in shared/papers, section 3.1) and its 1-scale baseline.

Pipeline::

    image -> pyramid (halve until the smaller side < patch_size) -> 16x16 patches of every scale
          -> one shared Linear projection -> + position(scale, row, column) -> [CLS] + tokens
          -> pre-norm transformer encoder -> LayerNorm -> CLS -> Linear-GELU-Linear = embedding
          -> Linear = logits

Scales. Scale 0 is the input; scale k is the input resized (bilinear, antialiased, directly from the input so
no blur accumulates) to ``(H // 2^k, W // 2^k)``. Every scale whose smaller side is >= ``patch_size`` is kept
(the paper: "progressively downscaling ... until the smallest side is greater than 16 pixels"); ``scales=n``
keeps the first n. The pyramid is computed from the configured ``image_size`` at build time, so the token
count is fixed per model (``token_counts`` per scale, ``num_tokens`` in total, CLS excluded) and ``forward``
refuses any other input size rather than silently changing the sequence.

Sizes that are not multiples of the patch size: each scale is centre-cropped to the largest multiple of
``patch_size`` (at most ``patch_size - 1`` px lost per side pair, per scale), so a 300x200 input works (18x12
patches at full resolution, cropped from 288x192). Padding would instead create patches that are mostly
artificial border, which the model would have to learn to ignore.

Patch extraction is vectorised: ``F.unfold`` cuts each scale into flattened ``C*p*p`` patch vectors
(channel-major, then row, then column, the same order as ``x[:, :, r*p:(r+1)*p, c*p:(c+1)*p].flatten(1)``),
the scales are concatenated, and one Linear projects all of them; the only Python loop is over the (at most
~7) scales.

Position. The paper adds "a three-dimensional positional encoding ... scale level and the patch's spatial
coordinates (X and Y)". We use that factorisation literally: three learned tables (scale, row, column) whose
entries are summed per token. Compared with one learned vector per token (ViT's 1-D table) it needs
``(n_scales + 2 * max_grid) * width`` parameters instead of ``num_tokens * width``, shares the row/column
meaning across scales, and, because the tables are sized by ``max_grid`` (not by ``image_size``), the weights
have the same shapes for every input size: a checkpoint trained at 224x224 can be rebuilt and fine-tuned at
384x384. Grids with more than ``max_grid`` rows or columns are refused at build time with the limit named.

Our choices where paper 003 gives no detail: the paper says only that the [CLS] output "is processed through a
feed-forward layer to produce an embedding vector" and that classification adds "an additional feed-forward
layer"; the pre-norm encoder, the final LayerNorm and the Linear-GELU-Linear embedding head are ours (the common
ViT design), as are the widths, depths and head counts of the presets.

``pool="mean"`` (ours, off by default) takes the embedding head's input from the mean of the patch tokens instead
of the [CLS] output: an embedding pooled from a token map, which :mod:`models.similarity_maps` explains exactly.

``vit`` / ``vit_tiny`` are the same network restricted to the full-resolution scale (the paper's "ViT" row in
the ablation); ``msvit`` defaults to a small ViT (width 384, depth 6, 6 heads) that trains on one GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.builders import register
from models.output import ModelOutput


def pyramid_sizes(image_size: tuple[int, int], patch_size: int) -> list[tuple[int, int]]:
    """Sizes of the scales kept: ``(H // 2^k, W // 2^k)`` while the smaller side is >= ``patch_size``."""
    h, w = image_size
    sizes: list[tuple[int, int]] = []
    while min(h, w) >= patch_size:
        sizes.append((h, w))
        h, w = h // 2, w // 2
    return sizes


def _trunc_normal(p: Tensor, std: float = 0.02) -> None:
    """Normal(0, std) truncated at +-2 std, by inverse-CDF sampling.

    Not ``nn.init.trunc_normal_``: its bounds are absolute (the usual ``std=0.02`` call does not truncate at
    all) and, with bounds at 2 std, it resamples by rejection over the whole tensor: more than 10 s to
    initialise ``msvit`` on a busy 2-core CPU. One uniform draw through ``erfinv`` gives the same distribution
    in one pass.
    """
    lo, hi = (math.erf(v / math.sqrt(2.0)) for v in (-2.0, 2.0))
    with torch.no_grad():
        p.uniform_(lo, hi).erfinv_().mul_(std * math.sqrt(2.0)).clamp_(-2 * std, 2 * std)


def downscale(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear resize. Computed in float32: the antialiased kernel has no CPU half/bfloat16
    implementation, and this touches only the pixels, never the transformer."""
    out = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.to(x.dtype)


class MultiScaleViT(nn.Module):
    """ViT over the tokens of an image pyramid; see the module docstring for the design."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        *,
        width: int = 384,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        embedding_dim: int = 256,
        patch_size: int = 16,
        max_grid: int = 64,
        scales: int | None = None,
        pool: str = "cls",
    ) -> None:
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' (the [CLS] output) or 'mean' (of the patch tokens), got {pool!r}")
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        if patch_size < 1 or max_grid < 1:
            raise ValueError(f"patch_size and max_grid must be >= 1, got {patch_size} and {max_grid}")
        sizes = pyramid_sizes(image_size, patch_size)
        if not sizes:
            raise ValueError(
                f"image_size {image_size[0]}x{image_size[1]} is smaller than one {patch_size}x{patch_size} patch"
            )
        if scales is not None:
            if not 1 <= scales <= len(sizes):
                raise ValueError(
                    f"scales={scales} but image_size {image_size[0]}x{image_size[1]} with patch_size "
                    f"{patch_size} has {len(sizes)} scale(s) with a side >= {patch_size}: {sizes}"
                )
            sizes = sizes[:scales]
        rows, cols = image_size[0] // patch_size, image_size[1] // patch_size
        if max(rows, cols) > max_grid:
            raise ValueError(
                f"image_size {image_size[0]}x{image_size[1]} gives a {rows}x{cols} patch grid, more than "
                f"max_grid={max_grid} rows/columns; raise max_grid or use a smaller image_size"
            )
        # Scale k has at most max_grid / 2^k rows, so bit_length(max_grid) scale entries cover every allowed
        # input and the table's shape does not depend on image_size.
        n_scale_entries = max_grid.bit_length()

        self.image_size = tuple(image_size)
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.scale_sizes = sizes
        self.grids = [(h // patch_size, w // patch_size) for h, w in sizes]
        self.token_counts = [r * c for r, c in self.grids]
        self.num_tokens = sum(self.token_counts)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.pool = pool

        scale_idx, row_idx, col_idx = [], [], []
        for k, (r, c) in enumerate(self.grids):
            rr, cc = torch.meshgrid(torch.arange(r), torch.arange(c), indexing="ij")
            scale_idx.append(torch.full((r * c,), k))
            row_idx.append(rr.flatten())
            col_idx.append(cc.flatten())
        # Non-persistent: derived from image_size, so checkpoints hold only learned weights.
        self.register_buffer("token_scale", torch.cat(scale_idx), persistent=False)
        self.register_buffer("token_row", torch.cat(row_idx), persistent=False)
        self.register_buffer("token_col", torch.cat(col_idx), persistent=False)

        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, width)
        self.scale_embed = nn.Parameter(torch.zeros(n_scale_entries, width))
        self.row_embed = nn.Parameter(torch.zeros(max_grid, width))
        self.col_embed = nn.Parameter(torch.zeros(max_grid, width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.embed_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=heads,
            dim_feedforward=int(width * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors only apply to post-norm layers with padding masks; we have neither.
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.embed = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, embedding_dim))
        self.head = nn.Linear(embedding_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.scale_embed, self.row_embed, self.col_embed, self.cls_token):
            _trunc_normal(p)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.MultiheadAttention):
                # The fused q/k/v projection is a bare Parameter, not an nn.Linear.
                _trunc_normal(m.in_proj_weight)
                nn.init.zeros_(m.in_proj_bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, num_tokens, C*p*p]``: flattened patches of every scale, scale 0 first."""
        p = self.patch_size
        parts = []
        for k, ((h, w), (rows, cols)) in enumerate(zip(self.scale_sizes, self.grids, strict=True)):
            xs = x if k == 0 else downscale(x, (h, w))
            top, left = (h - rows * p) // 2, (w - cols * p) // 2
            xs = xs[:, :, top : top + rows * p, left : left + cols * p]
            parts.append(F.unfold(xs, kernel_size=p, stride=p))  # [B, C*p*p, rows*cols], row-major
        return torch.cat(parts, dim=2).transpose(1, 2)

    def positions(self) -> Tensor:
        """``[num_tokens, width]``: scale + row + column embedding of every token."""
        return (
            self.scale_embed[self.token_scale]  # type: ignore[index]
            + self.row_embed[self.token_row]  # type: ignore[index]
            + self.col_embed[self.token_col]  # type: ignore[index]
        )

    def encode(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> the encoder's normalised outputs ``[B, 1 + num_tokens, width]`` ([CLS] first)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, *self.image_size):
            raise ValueError(
                f"this model was built for inputs [B, {self.in_channels}, {self.image_size[0]}, "
                f"{self.image_size[1]}] (its token pyramid is fixed at build time), got {list(x.shape)}"
            )
        tokens = self.patch_embed(self.patchify(x)) + self.positions()
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        tokens = self.embed_dropout(torch.cat([cls, tokens], dim=1))
        return self.norm(self.encoder(tokens))

    def forward(self, x: Tensor) -> ModelOutput:
        encoded = self.encode(x)
        pooled = encoded[:, 1:].mean(dim=1) if self.pool == "mean" else encoded[:, 0]
        embedding = self.embed(pooled)
        return ModelOutput(embedding=embedding, logits=self.head(embedding))


def _register(name: str, *, multi_scale: bool, width: int, depth: int, heads: int, embedding_dim: int) -> None:
    """Register a variant; the defaults above become the keyword-only options that ``build`` validates."""
    if multi_scale:

        def build_ms(
            num_classes: int,
            in_channels: int,
            image_size: tuple[int, int],
            *,
            width: int = width,
            depth: int = depth,
            heads: int = heads,
            mlp_ratio: float = 4.0,
            dropout: float = 0.1,
            embedding_dim: int = embedding_dim,
            patch_size: int = 16,
            max_grid: int = 64,
            scales: int | None = None,
            pool: str = "cls",
        ) -> MultiScaleViT:
            return MultiScaleViT(
                num_classes,
                in_channels,
                image_size,
                width=width,
                depth=depth,
                heads=heads,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                embedding_dim=embedding_dim,
                patch_size=patch_size,
                max_grid=max_grid,
                scales=scales,
                pool=pool,
            )

        register(name)(build_ms)
        return

    def build_single(
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        *,
        width: int = width,
        depth: int = depth,
        heads: int = heads,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        embedding_dim: int = embedding_dim,
        patch_size: int = 16,
        max_grid: int = 64,
        pool: str = "cls",
    ) -> MultiScaleViT:
        return MultiScaleViT(
            num_classes,
            in_channels,
            image_size,
            width=width,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            embedding_dim=embedding_dim,
            patch_size=patch_size,
            max_grid=max_grid,
            scales=1,
            pool=pool,
        )

    register(name)(build_single)


_register("msvit", multi_scale=True, width=384, depth=6, heads=6, embedding_dim=256)
_register("vit", multi_scale=False, width=384, depth=6, heads=6, embedding_dim=256)
_register("msvit_tiny", multi_scale=True, width=64, depth=2, heads=2, embedding_dim=64)
_register("vit_tiny", multi_scale=False, width=64, depth=2, heads=2, embedding_dim=64)

__all__ = ["MultiScaleViT", "downscale", "pyramid_sizes"]
