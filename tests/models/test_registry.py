"""Registry contract: every model builds, runs forward and backward, and round-trips its build_config."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from models import ModelOutput, UnknownModelError, available, build, options_of

EXPECTED = {"cnn5", "mscfnet2", "mscfnet4", "resnet18", "resnet50", "msvit", "vit", "msvit_tiny", "vit_tiny"}
DATASETS = {
    "cifar10": {"num_classes": 10, "in_channels": 3, "image_size": 32},
    "cifar100": {"num_classes": 100, "in_channels": 3, "image_size": 32},
    "fashion-mnist": {"num_classes": 10, "in_channels": 1, "image_size": 28},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    model.train()
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.embedding.shape == (x.shape[0], model.embedding_dim)
    assert out.logits.shape == (x.shape[0], num_classes)
    (out.logits.square().mean() + out.embedding.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"


def test_available_lists_every_family() -> None:
    assert set(available()) == EXPECTED
    assert available() == sorted(available())


# CIFAR-100 differs from CIFAR-10 only in the class count, which the parameter-count tests cover.
@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])
@pytest.mark.parametrize("name", sorted(EXPECTED - {"msvit", "vit"}))
def test_forward_backward_at_dataset_sizes(name: str, dataset: str) -> None:
    torch.manual_seed(0)
    spec = DATASETS[dataset]
    model = build(name, **spec)
    assert model.num_classes == spec["num_classes"]
    size = spec["image_size"]
    forward_backward(model, torch.randn(2, spec["in_channels"], size, size), spec["num_classes"])


@pytest.mark.parametrize("name", ["msvit_tiny", "vit_tiny"])
@pytest.mark.parametrize("size", [(224, 224), (300, 200)])
def test_tiny_vits_forward_backward_at_large_sizes(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=5, in_channels=3, image_size=size)
    forward_backward(model, torch.randn(2, 3, *size), 5)


@pytest.mark.parametrize("name", ["msvit", "vit"])
def test_full_size_vits_run_at_224(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=14, in_channels=3, image_size=224).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.embedding.shape == (1, 256) and out.logits.shape == (1, 14)
    assert torch.isfinite(out.logits).all()


def test_resnet_imagenet_stem_forward_backward() -> None:
    torch.manual_seed(0)
    model = build("resnet18", num_classes=3, image_size=224)
    forward_backward(model, torch.randn(2, 3, 224, 224), 3)


def test_unknown_name_lists_available_models() -> None:
    with pytest.raises(UnknownModelError) as info:
        build("resnet1000", num_classes=10)
    message = str(info.value)
    assert "resnet1000" in message and all(name in message for name in EXPECTED)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_unknown_option_is_named() -> None:
    with pytest.raises(ValueError, match=r"\['widht'\].*'vit'.*accepted options: .*'width'"):
        build("vit", num_classes=10, image_size=224, widht=128)
    with pytest.raises(ValueError, match=r"\['scales'\]"):
        build("vit_tiny", num_classes=10, image_size=224, scales=2)  # single-scale by definition


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_option_defaults_are_json(name: str) -> None:
    json.dumps(options_of(name))


@pytest.mark.parametrize(
    ("name", "options", "size"),
    [
        ("cnn5", {"global_pool": True}, 40),
        ("mscfnet2", {"width": 16, "batch_norm": True}, (48, 32)),
        ("mscfnet4", {}, 32),
        ("resnet18", {"stem": "imagenet"}, 64),
        ("resnet50", {"zero_init_residual": False}, 32),
        ("msvit_tiny", {"scales": 2, "max_grid": 16}, (96, 64)),
        ("vit_tiny", {"embedding_dim": 32}, 48),
    ],
)
def test_build_config_round_trips_through_json(name: str, options: dict[str, object], size: object) -> None:
    model = build(name, num_classes=6, in_channels=1, image_size=size, **options)
    config = json.loads(json.dumps(model.build_config))
    assert config["name"] == name and config["options"] == {**options_of(name), **options}
    rebuilt = build(
        config["name"],
        config["num_classes"],
        config["in_channels"],
        config["image_size"],
        **config["options"],
    )
    assert rebuilt.build_config == model.build_config
    assert n_params(rebuilt) == n_params(model)
    rebuilt.load_state_dict(model.state_dict())
