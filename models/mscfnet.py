"""MSCFNet: multi-scale convolutional fusion network (Aeini, paper 000 in shared/papers).

A multi-scale layer applies 3x3, 5x5 and 7x7 convolutions in parallel to the same input, sums them, then ReLU and
2x2 max pooling. ``mscfnet2`` stacks two such layers, ``mscfnet4`` four; then flatten -> Linear(128) -> ReLU ->
Linear(classes). The 128-d hidden vector is the embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.builders import register
from models.output import ModelOutput

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


class CosineClassifier(nn.Module):
    """``logits = scale * cos(embedding, w_c)``: a classifier on the unit sphere (NormFace, Wang et al. 2017).

    Cross-entropy on these logits pulls each embedding's *direction* towards its class weight, which is exactly
    what cosine-similarity retrieval ranks by; a plain linear classifier only separates classes by half-spaces and
    leaves the same-class vectors spread in angle. ``scale`` is fixed (not learned) so the softmax cannot saturate
    by shrinking it.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"cosine_scale must be > 0, got {scale}")
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) / in_features**0.5)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class MSCFNet(nn.Module):
    """MSCFNet with ``depth`` multi-scale layers.

    Paper-exact by default. Options beyond the paper (our choices, all off by default):

    - ``batch_norm`` after each fusion (the paper has none), ``dropout`` before the classifier;
    - ``width`` channels in every layer instead of the paper's 64, or ``widths`` one number per layer;
    - ``global_pool`` (adaptive average pooling to 1x1 before the head). Without it the flatten size is
      ``width * (H / 2^depth) * (W / 2^depth)`` (floor), so larger inputs grow the first Linear layer;
    - ``embedding="bn"``: the 128-d embedding is ``Linear -> BatchNorm1d`` (signed, centred) instead of the paper's
      ``Linear -> ReLU``, whose zeros and positive orthant waste angle for cosine retrieval;
    - ``classifier="cosine"``: a :class:`CosineClassifier` with ``cosine_scale`` instead of a Linear layer.

    The ReLU after each fusion is ours too: the paper's text names the fusion by addition and the pooling, not the
    activation between them.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        *,
        width: int = 64,
        widths: Sequence[int] | None = None,
        hidden: int = 128,
        batch_norm: bool = False,
        dropout: float = 0.0,
        global_pool: bool = False,
        embedding: str = "relu",
        classifier: str = "linear",
        cosine_scale: float = 16.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        h, w = image_size
        if min(h, w) < 2**depth:
            raise ValueError(f"mscfnet{depth} needs inputs of at least {2**depth} px per side, got {h}x{w}")
        per_layer = tuple(widths) if widths is not None else (width,) * depth
        if len(per_layer) != depth or min(per_layer) < 1:
            raise ValueError(f"widths must be {depth} positive channel counts (one per layer), got {widths!r}")
        if embedding not in ("relu", "bn"):
            raise ValueError(f"embedding must be 'relu' (the paper's) or 'bn', got {embedding!r}")
        if classifier not in ("linear", "cosine"):
            raise ValueError(f"classifier must be 'linear' (the paper's) or 'cosine', got {classifier!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in per_layer:
            layers.append(MultiScaleConv(channels, out_channels, fused=fused))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = out_channels
            h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        flat = channels if global_pool else channels * h * w
        act: nn.Module = nn.ReLU(inplace=True) if embedding == "relu" else nn.BatchNorm1d(hidden)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), act)
        top: nn.Module = nn.Linear(hidden, num_classes)
        if classifier == "cosine":
            top = CosineClassifier(hidden, num_classes, cosine_scale)
        self.head = nn.Sequential(nn.Dropout(dropout) if dropout > 0 else nn.Identity(), top)
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
        widths: Sequence[int] | None = None,
        batch_norm: bool = False,
        dropout: float = 0.0,
        global_pool: bool = False,
        embedding: str = "relu",
        classifier: str = "linear",
        cosine_scale: float = 16.0,
        fused: bool = True,
    ) -> MSCFNet:
        return MSCFNet(
            depth,
            num_classes,
            in_channels,
            image_size,
            width=width,
            widths=widths,
            batch_norm=batch_norm,
            dropout=dropout,
            global_pool=global_pool,
            embedding=embedding,
            classifier=classifier,
            cosine_scale=cosine_scale,
            fused=fused,
        )

    return build


register("mscfnet2")(_builder(2))
register("mscfnet4")(_builder(4))

__all__ = ["CosineClassifier", "MSCFNet", "MultiScaleConv"]
