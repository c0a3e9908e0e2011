"""``cnn5``: the plain-CNN baseline of the MSCFNet paper (paper 000 in shared/papers, Tables 1-3).

The paper calls it "a CNN with five convolutional layers" / "CNN (5 layers)" and gives only its parameter
counts: 122,570 (CIFAR-10), 128,420 (CIFAR-100) and 93,322 (Fashion-MNIST). Those three numbers are reproduced
exactly, and only, by the classic Keras/TensorFlow CIFAR tutorial network, whose five *weight* layers are
three 3x3 convolutions and two dense layers::

    Conv3x3(32, valid) -> ReLU -> MaxPool2 -> Conv3x3(64, valid) -> ReLU -> MaxPool2
    -> Conv3x3(64, valid) -> ReLU -> Flatten -> Linear(64) -> ReLU -> Linear(classes)

On 32x32 the flatten is 64 * 4 * 4 = 1024, on 28x28 it is 64 * 3 * 3 = 576; that input-dependent flatten is
the whole 29,248 gap between the CIFAR-10 and Fashion-MNIST counts (28,672 in the dense layer + 576 in the
first convolution), and the 64-d hidden layer is the 5,850 = 90 * 65 gap between CIFAR-10 and CIFAR-100. A
search over networks with five 3x3 convolutions (same/valid padding per layer, pooling after any of them, bias
or BN, a 64-d dense layer, widths up to 512) found no solution whose widths are all multiples of 8, so "five
layers" counts weight layers.

The 64-d hidden vector is the embedding. ``global_pool=True`` (off by default, not in the paper) averages the
last feature map to 1x1 so the dense layer stays 64 x 64 for large inputs instead of growing with the image.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.builders import register
from models.output import ModelOutput

CHANNELS = (32, 64, 64)
HIDDEN = 64


def _feature_side(side: int) -> int:
    """Side length after the three valid convolutions and two poolings (<= 0 means the input is too small)."""
    side = (side - 2) // 2
    side = (side - 2) // 2
    return side - 2


class CNN5(nn.Module):
    """The paper's plain CNN baseline: three valid 3x3 convolutions, two max pools, two dense layers."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        *,
        global_pool: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        h, w = (_feature_side(s) for s in image_size)
        if min(h, w) < 1:
            raise ValueError(
                "cnn5 needs inputs of at least 18 px per side (three valid 3x3 convolutions, two 2x2 pools), "
                f"got {image_size[0]}x{image_size[1]}"
            )
        c1, c2, c3 = CHANNELS
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3),
            nn.ReLU(inplace=True),
        )
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        flat = c3 if global_pool else c3 * h * w
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(flat, HIDDEN), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(HIDDEN, num_classes))
        self.embedding_dim = HIDDEN
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> ModelOutput:
        embedding = self.embed(self.pool(self.features(x)))
        return ModelOutput(embedding=embedding, logits=self.head(embedding))


@register("cnn5")
def build_cnn5(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    *,
    global_pool: bool = False,
    dropout: float = 0.0,
) -> CNN5:
    return CNN5(num_classes, in_channels, image_size, global_pool=global_pool, dropout=dropout)


__all__ = ["CNN5"]
