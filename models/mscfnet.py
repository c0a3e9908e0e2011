"""MSCFNet: multi-scale convolutional fusion network (Aeini, paper 000 in shared/papers).

A multi-scale layer applies 3x3, 5x5 and 7x7 convolutions in parallel to the same input, sums them, then ReLU and
2x2 max pooling. ``mscfnet2`` stacks two such layers, ``mscfnet4`` four; then flatten -> Linear(128) -> ReLU ->
Linear(classes). The 128-d hidden vector is the embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.output import ModelOutput
from models.registry import register

KERNELS = (3, 5, 7)


class MultiScaleConv(nn.Module):
    """Parallel 3x3/5x5/7x7 convolutions fused by addition.

    The three kernels and biases are the parameters (that is the paper's parameter count), but the forward pass
    runs ONE 7x7 convolution with the summed kernel (3x3 and 5x5 zero-padded to 7x7, biases summed). Convolution
    is linear in the kernel, so the output equals the sum of the three convolutions and autograd hands each branch
    exactly the gradient it would get separately, at 49 instead of 83 multiply-adds per weight position.
    ``fused=False`` runs the three convolutions explicitly (used by the tests to prove the equivalence).
    """

    def __init__(self, in_channels: int, out_channels: int, *, fused: bool = True) -> None:
        super().__init__()
        self.fused = fused
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, out_channels, k, padding=k // 2) for k in KERNELS)

    def fused_weight(self) -> tuple[Tensor, Tensor]:
        big = max(KERNELS)
        convs: list[nn.Conv2d] = list(self.branches)  # type: ignore[arg-type]
        weight = torch.stack([F.pad(c.weight, [(big - k) // 2] * 4) for c, k in zip(convs, KERNELS, strict=True)])
        bias = torch.stack([c.bias for c in convs if c.bias is not None])
        return weight.sum(0), bias.sum(0)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            weight, bias = self.fused_weight()
            return F.conv2d(x, weight, bias, padding=max(KERNELS) // 2)
        return sum(conv(x) for conv in self.branches)  # type: ignore[return-value]


class MSCFNet(nn.Module):
    """MSCFNet with ``depth`` multi-scale layers.

    Paper-exact by default. Options beyond the paper, all off by default: ``batch_norm`` after each fusion,
    ``dropout`` before the classifier, ``width`` channels instead of 64, and ``global_pool`` (adaptive average
    pooling to 1x1 before the head). Without ``global_pool`` the flatten size is ``width * (H / 2^depth) *
    (W / 2^depth)`` (floor), so larger inputs grow the first Linear layer; ``global_pool=True`` keeps the head
    at ``width * 128`` weights whatever the input size.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        *,
        width: int = 64,
        hidden: int = 128,
        batch_norm: bool = False,
        dropout: float = 0.0,
        global_pool: bool = False,
        fused: bool = True,
    ) -> None:
        super().__init__()
        h, w = image_size
        if min(h, w) < 2**depth:
            raise ValueError(f"mscfnet{depth} needs inputs of at least {2**depth} px per side, got {h}x{w}")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers.append(MultiScaleConv(channels, width, fused=fused))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
            h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        flat = width if global_pool else width * h * w
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(hidden, num_classes))
        self.embedding_dim = hidden
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> ModelOutput:
        embedding = self.embed(self.pool(self.features(x)))
        return ModelOutput(embedding=embedding, logits=self.head(embedding))


def _builder(depth: int):  # type: ignore[no-untyped-def]
    def build(
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        *,
        width: int = 64,
        batch_norm: bool = False,
        dropout: float = 0.0,
        global_pool: bool = False,
        fused: bool = True,
    ) -> MSCFNet:
        return MSCFNet(
            depth,
            num_classes,
            in_channels,
            image_size,
            width=width,
            batch_norm=batch_norm,
            dropout=dropout,
            global_pool=global_pool,
            fused=fused,
        )

    return build


register("mscfnet2")(_builder(2))
register("mscfnet4")(_builder(4))

__all__ = ["MSCFNet", "MultiScaleConv"]
