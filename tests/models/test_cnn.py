"""cnn5: the MSCFNet paper's plain-CNN baseline, checked against the paper's parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import build


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("num_classes", "in_channels", "size", "expected"),
    [(10, 3, 32, 122_570), (100, 3, 32, 128_420), (10, 1, 28, 93_322)],
    ids=["cifar10", "cifar100", "fashion-mnist"],
)
def test_paper_parameter_counts(num_classes: int, in_channels: int, size: int, expected: int) -> None:
    # "CNN (5 layers)" rows of Tables 1-3 of the MSCFNet paper.
    assert n_params(build("cnn5", num_classes=num_classes, in_channels=in_channels, image_size=size)) == expected


def test_flatten_follows_input_size_and_global_pool_fixes_it() -> None:
    model = build("cnn5", num_classes=10, image_size=(64, 40))
    # 64 -> 62 -> 31 -> 29 -> 14 -> 12 ; 40 -> 38 -> 19 -> 17 -> 8 -> 6
    assert model.embed[1].in_features == 64 * 12 * 6
    out = model(torch.randn(2, 3, 64, 40))
    assert out.embedding.shape == (2, 64) and out.logits.shape == (2, 10)
    pooled = build("cnn5", num_classes=10, image_size=224, global_pool=True)
    assert pooled.embed[1].in_features == 64
    assert pooled(torch.randn(1, 3, 224, 224)).logits.shape == (1, 10)


def test_smallest_input_works_and_smaller_raises() -> None:
    build("cnn5", num_classes=10, image_size=18)(torch.randn(1, 3, 18, 18))
    with pytest.raises(ValueError, match="at least 18 px"):
        build("cnn5", num_classes=10, image_size=(17, 32))
