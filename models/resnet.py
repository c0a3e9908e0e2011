"""ResNet-18 and ResNet-50 (He et al. 2016) in plain torch: the MSCFNet paper's deeper baselines.

Embedding = globally average-pooled last stage (512-d for ResNet-18, 2048-d for ResNet-50); logits = one
Linear.

Stem. ``stem="auto"`` picks the CIFAR stem (3x3 stride-1 convolution, no max pool) when
``min(image_size) <= 64`` and the ImageNet stem (7x7 stride-2 convolution + 3x3 stride-2 max pool) above that:
on 32x32 inputs the ImageNet stem would leave a 1x1 map after the last stage, on 224x224 the CIFAR stem would
cost 16x the compute.

``zero_init_residual`` (default on) zeroes the last BatchNorm gamma of every residual block, so each block
starts as the identity and the deep network trains like a shallow one early on (Goyal et al. 2017, "Accurate,
large minibatch SGD"); it changes the initial state only, not the architecture.

Parameter counts measured with this code for 10 / 100 classes (CIFAR stem, 3 channels) and for Fashion-MNIST
(CIFAR stem, 1 channel, 10 classes), beside the paper's Tables 1-3:

==========  ============  ============  ============  ===========================================
model       CIFAR-10      CIFAR-100     Fashion       paper (CIFAR-10 / CIFAR-100 / Fashion)
==========  ============  ============  ============  ===========================================
resnet18    11,173,962    11,220,132    11,172,810    11,184,778 / 11,230,948 / 11,183,626
resnet50    23,520,842    23,705,252    23,519,690    23,608,202 / 23,792,612 / 23,601,930
==========  ============  ============  ============  ===========================================

The class-count and channel deltas agree (ResNet-18: 90 x 513 and a 3x3x64 first convolution), but the paper's
ResNet-18 has 10,816 more parameters than the standard CIFAR ResNet-18 reproduced here; we do not know which
implementation it used and do not fudge the architecture to match. The paper's ResNet-50 counts are exactly
Keras' ``ResNet50(include_top=False)`` (23,587,712, ImageNet 7x7 stem) plus a Dense head. With the 7x7 stem
this code gives 23,528,522 for 10 classes; the difference, 79,680 = 3 x 26,560 (the number of BatchNorm
channels), is a bias on every convolution (redundant before BatchNorm) plus the two BatchNorm running
statistics Keras reports as (non-trainable) parameters.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from models.builders import register
from models.output import ModelOutput

Stem = Literal["auto", "cifar", "imagenet"]
CIFAR_STEM_MAX_SIDE = 64


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    # Projection only where the shape changes (option B of the paper); identity elsewhere.
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_ch, planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as in torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def resolve_stem(stem: str, image_size: tuple[int, int]) -> Literal["cifar", "imagenet"]:
    """``"auto"`` -> ``"cifar"`` for small inputs (``min(side) <= 64``), ``"imagenet"`` otherwise."""
    if stem == "auto":
        return "cifar" if min(image_size) <= CIFAR_STEM_MAX_SIDE else "imagenet"
    if stem in ("cifar", "imagenet"):
        return stem  # type: ignore[return-value]
    raise ValueError(f"stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")


class ResNet(nn.Module):
    """A four-stage ResNet; ``block`` and ``layers`` pick ResNet-18 or ResNet-50."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        *,
        stem: Stem = "auto",
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        self.stem_kind = resolve_stem(stem, image_size)
        if self.stem_kind == "cifar":
            self.stem = nn.Sequential(_conv3x3(in_channels, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages: list[nn.Module] = []
        in_ch = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if i == 0 else 2
            stage: list[nn.Module] = []
            for j in range(blocks):
                stage.append(block(in_ch, planes, stride if j == 0 else 1))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(in_ch, num_classes)
        self.embedding_dim = in_ch
        self.num_classes = num_classes
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: Tensor) -> ModelOutput:
        embedding = self.pool(self.stages(self.stem(x)))
        return ModelOutput(embedding=embedding, logits=self.head(embedding))


@register("resnet18")
def build_resnet18(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    *,
    stem: Stem = "auto",
    zero_init_residual: bool = True,
) -> ResNet:
    return ResNet(
        BasicBlock,
        (2, 2, 2, 2),
        num_classes,
        in_channels,
        image_size,
        stem=stem,
        zero_init_residual=zero_init_residual,
    )


@register("resnet50")
def build_resnet50(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    *,
    stem: Stem = "auto",
    zero_init_residual: bool = True,
) -> ResNet:
    return ResNet(
        Bottleneck,
        (3, 4, 6, 3),
        num_classes,
        in_channels,
        image_size,
        stem=stem,
        zero_init_residual=zero_init_residual,
    )


__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resolve_stem"]
