"""ResNet-18/50: reference parameter counts, stem selection and zero-initialised residual branches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import build
from models.resnet import BasicBlock, Bottleneck, resolve_stem


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    # torchvision's resnet18 / resnet50 counts (ImageNet, 1000 classes): an independent architecture check.
    [("resnet18", 11_689_512), ("resnet50", 25_557_032)],
)
def test_imagenet_counts_match_torchvision(name: str, expected: int) -> None:
    assert n_params(build(name, num_classes=1000, image_size=224)) == expected


@pytest.mark.parametrize(
    ("name", "num_classes", "in_channels", "expected"),
    [
        ("resnet18", 10, 3, 11_173_962),  # the usual CIFAR ResNet-18 count
        ("resnet18", 100, 3, 11_220_132),
        ("resnet18", 10, 1, 11_172_810),
        ("resnet50", 10, 3, 23_520_842),
        ("resnet50", 100, 3, 23_705_252),
        ("resnet50", 10, 1, 23_519_690),
    ],
)
def test_cifar_stem_counts(name: str, num_classes: int, in_channels: int, expected: int) -> None:
    model = build(name, num_classes=num_classes, in_channels=in_channels, image_size=32)
    assert n_params(model) == expected


@pytest.mark.parametrize(
    ("stem", "size", "expected"),
    [
        ("auto", (32, 32), "cifar"),
        ("auto", (64, 300), "cifar"),
        ("auto", (65, 65), "imagenet"),
        ("cifar", (224, 224), "cifar"),
        ("imagenet", (32, 32), "imagenet"),
    ],
)
def test_stem_selection(stem: str, size: tuple[int, int], expected: str) -> None:
    assert resolve_stem(stem, size) == expected


def test_stems_change_the_first_layer() -> None:
    small = build("resnet18", num_classes=10, image_size=32)
    large = build("resnet18", num_classes=10, image_size=224)
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1)
    assert large.stem[0].kernel_size == (7, 7) and isinstance(large.stem[-1], nn.MaxPool2d)
    with pytest.raises(ValueError, match="stem must be"):
        build("resnet18", num_classes=10, stem="vgg")


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_residual(zero_init: bool) -> None:
    model = build("resnet50", num_classes=10, image_size=32, zero_init_residual=zero_init)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert len(blocks) == 16
    for block in blocks:
        expected = 0.0 if zero_init else 1.0
        assert torch.all(block.last_bn().weight == expected)
        assert torch.all(block.bn1.weight == 1.0)


def test_zero_init_blocks_start_as_identity_plus_relu() -> None:
    torch.manual_seed(0)
    model = build("resnet18", num_classes=10, image_size=32).eval()
    block = model.stages[0][0]
    x = torch.randn(1, 64, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet50", 2048)])
def test_embedding_is_pooled_last_stage(name: str, dim: int) -> None:
    model = build(name, num_classes=7, image_size=32).eval()
    assert model.embedding_dim == dim
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.embedding.shape == (2, dim) and out.logits.shape == (2, 7)
    assert torch.all(out.embedding >= 0)  # average of post-ReLU features
