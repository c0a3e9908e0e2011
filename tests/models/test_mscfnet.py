"""MSCFNet: the paper's parameter counts, the fused multi-scale convolution, options and input sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import build
from models.mscfnet import CosineClassifier, MultiScaleConv

CIFAR10 = {"num_classes": 10, "in_channels": 3, "image_size": 32}
CIFAR100 = {"num_classes": 100, "in_channels": 3, "image_size": 32}
FASHION = {"num_classes": 10, "in_channels": 1, "image_size": 28}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "dataset", "expected"),
    [
        ("mscfnet2", CIFAR10, 881_994),
        ("mscfnet2", CIFAR100, 893_604),
        ("mscfnet2", FASHION, 748_490),
        ("mscfnet4", CIFAR10, 1_070_794),
        ("mscfnet4", CIFAR100, 1_082_404),
        ("mscfnet4", FASHION, 1_035_594),
    ],
)
def test_paper_parameter_counts(name: str, dataset: dict[str, int], expected: int) -> None:
    # Tables 1-3 of the MSCFNet paper.
    assert n_params(build(name, **dataset)) == expected


def test_fused_layer_equals_three_branches_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    fused = MultiScaleConv(3, 8, fused=True).double()
    explicit = MultiScaleConv(3, 8, fused=False).double()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    target = torch.randn(2, 8, 11, 9, dtype=torch.float64)

    out_f, out_e = fused(x), explicit(x)
    torch.testing.assert_close(out_f, out_e, rtol=1e-10, atol=1e-10)
    ((out_f - target) ** 2).sum().backward()
    ((out_e - target) ** 2).sum().backward()
    for (name, p_f), p_e in zip(fused.named_parameters(), explicit.parameters(), strict=True):
        assert p_f.grad is not None and p_e.grad is not None, name
        assert p_f.grad.abs().sum() > 0, name  # every branch really receives a gradient
        torch.testing.assert_close(p_f.grad, p_e.grad, rtol=1e-10, atol=1e-10, msg=name)


def test_fused_model_equals_explicit_model() -> None:
    torch.manual_seed(1)
    fused = build("mscfnet4", **CIFAR10)
    explicit = build("mscfnet4", **CIFAR10, fused=False)
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 32, 32)
    a, b = fused(x), explicit(x)
    torch.testing.assert_close(a.embedding, b.embedding, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)


def test_options_change_the_network() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    bn = build("mscfnet2", **CIFAR10, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 2
    narrow = build("mscfnet2", **CIFAR10, width=16)
    assert narrow.features[0].branches[0].out_channels == 16
    pooled = build("mscfnet2", **CIFAR10, global_pool=True)
    assert pooled.embed[1].in_features == 64
    dropped = build("mscfnet2", **CIFAR10, dropout=0.5)
    assert isinstance(dropped.head[0], nn.Dropout)
    for model in (bn, narrow, pooled, dropped):
        out = model(x)
        assert out.embedding.shape == (2, 128) and out.logits.shape == (2, 10)
    dropped.eval()
    torch.testing.assert_close(dropped(x).logits, dropped(x).logits)  # dropout is off in eval mode


def test_non_square_input_grows_the_flatten() -> None:
    model = build("mscfnet2", num_classes=5, image_size=(96, 64))
    assert model.embed[1].in_features == 64 * (96 // 4) * (64 // 4)
    out = model(torch.randn(1, 3, 96, 64))
    assert out.logits.shape == (1, 5)
    pooled = build("mscfnet2", num_classes=5, image_size=(96, 64), global_pool=True)
    assert n_params(pooled) < n_params(model)


@pytest.mark.parametrize(("name", "size"), [("mscfnet2", 3), ("mscfnet4", 15), ("mscfnet4", (32, 8))])
def test_too_small_inputs_raise(name: str, size: int | tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="at least"):
        build(name, num_classes=10, image_size=size)


def test_per_layer_widths_and_retrieval_head() -> None:
    torch.manual_seed(3)
    model = build("mscfnet4", **CIFAR10, batch_norm=True, widths=[8, 16, 24, 24], embedding="bn", classifier="cosine")
    convs = [m for m in model.features if isinstance(m, MultiScaleConv)]
    assert [c.branches[0].out_channels for c in convs] == [8, 16, 24, 24]
    assert model.embed[1].in_features == 24 * 2 * 2
    assert isinstance(model.embed[2], nn.BatchNorm1d)  # signed embedding, no ReLU zeros
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.embedding.shape == (4, 128) and (out.embedding < 0).any()
    # Cosine classifier: logits are scale * cos(embedding, class weight), so they lie in [-scale, scale] and do not
    # change when the embedding is rescaled.
    head = model.head[1]
    assert isinstance(head, CosineClassifier)
    assert out.logits.abs().max() <= head.scale + 1e-4
    torch.testing.assert_close(head(out.embedding * 7.0), out.logits)
    expected = head.scale * nn.functional.cosine_similarity(out.embedding.unsqueeze(1), head.weight.unsqueeze(0), dim=2)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)
    # The options go into build_config, so a checkpoint rebuilds the same network.
    assert model.build_config["options"]["widths"] == [8, 16, 24, 24]
    assert model.build_config["options"]["classifier"] == "cosine"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"widths": [8, 16]}, "widths must be 4"),
        ({"widths": [8, 16, 0, 8]}, "widths must be 4"),
        ({"embedding": "tanh"}, "embedding must be"),
        ({"classifier": "arc"}, "classifier must be"),
        ({"classifier": "cosine", "cosine_scale": 0.0}, "cosine_scale"),
    ],
)
def test_bad_head_options_raise(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build("mscfnet4", **CIFAR10, **options)
