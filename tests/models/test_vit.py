"""Multi-scale ViT: the token pyramid, vectorised patches, the 3-D position encoding and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build
from models.vit import MultiScaleViT, pyramid_sizes

P = 16


def tiny(name: str = "msvit_tiny", size: int | tuple[int, int] = 224, **options: object) -> MultiScaleViT:
    torch.manual_seed(0)
    model = build(name, num_classes=4, in_channels=3, image_size=size, **options)
    assert isinstance(model, MultiScaleViT)
    return model


def encoder_input_length(model: MultiScaleViT, x: torch.Tensor) -> int:
    seen: list[int] = []
    handle = model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_pyramid_224() -> None:
    # 224 -> 112 -> 56 -> 28 kept; 14 < 16 dropped.
    model = tiny()
    assert model.scale_sizes == [(224, 224), (112, 112), (56, 56), (28, 28)]
    assert model.token_counts == [14 * 14, 7 * 7, 3 * 3, 1 * 1] == [196, 49, 9, 1]
    assert model.num_tokens == 255
    assert encoder_input_length(model.eval(), torch.randn(1, 3, 224, 224)) == 256  # + [CLS]


def test_pyramid_300x200_follows_the_crop_rule() -> None:
    # Halve (floor) until the smaller side < 16: 300x200, 150x100, 75x50, 37x25; 18x12 is dropped.
    # Each scale keeps floor(side / 16) patches per side (centre crop to a multiple of 16).
    expected = [
        (300 // P) * (200 // P),
        (150 // P) * (100 // P),
        (75 // P) * (50 // P),
        (37 // P) * (25 // P),
    ]
    assert expected == [18 * 12, 9 * 6, 4 * 3, 2 * 1]
    model = tiny(size=(300, 200))
    assert model.scale_sizes == [(300, 200), (150, 100), (75, 50), (37, 25)]
    assert model.token_counts == expected
    assert model.num_tokens == 284
    assert encoder_input_length(model.eval(), torch.randn(1, 3, 300, 200)) == 285


def test_single_scale_vit_has_only_full_resolution_tokens() -> None:
    model = tiny("vit_tiny")
    assert model.token_counts == [196] and model.num_tokens == 196
    assert pyramid_sizes((224, 224), P)[:1] == model.scale_sizes


def test_scales_option_limits_the_pyramid() -> None:
    assert tiny(scales=2).token_counts == [196, 49]
    with pytest.raises(ValueError, match="scales=5"):
        tiny(scales=5)


def loop_patches(model: MultiScaleViT, x: torch.Tensor) -> torch.Tensor:
    """Slow reference: resize, centre-crop and cut every patch with explicit loops."""
    h0, w0 = x.shape[-2:]
    out = []
    k = 0
    h, w = h0, w0
    while min(h, w) >= P:
        xs = x if k == 0 else F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        rows, cols = h // P, w // P
        top, left = (h - rows * P) // 2, (w - cols * P) // 2
        for r in range(rows):
            for c in range(cols):
                y0, x0 = top + r * P, left + c * P
                out.append(xs[:, :, y0 : y0 + P, x0 : x0 + P].reshape(x.shape[0], -1))
        h, w, k = h // 2, w // 2, k + 1
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("size", [(224, 224), (300, 200)])
def test_vectorised_patches_equal_the_loop_reference(size: tuple[int, int]) -> None:
    model = tiny(size=size)
    x = torch.randn(2, 3, *size)
    reference = loop_patches(model, x)
    patches = model.patchify(x)
    assert patches.shape == (2, model.num_tokens, 3 * P * P)
    torch.testing.assert_close(patches, reference, rtol=0, atol=0)
    # One shared projection for all scales.
    torch.testing.assert_close(model.patch_embed(patches), model.patch_embed(reference))


def test_positions_are_scale_plus_row_plus_column() -> None:
    model = tiny()
    pos = model.positions()
    assert pos.shape == (255, 64)
    # Token 196 + 7 + 2 is scale 1 (7x7 grid), row 1, column 2.
    i = 196 + 7 + 2
    assert (model.token_scale[i], model.token_row[i], model.token_col[i]) == (1, 1, 2)
    torch.testing.assert_close(pos[i], model.scale_embed[1] + model.row_embed[1] + model.col_embed[2])
    # Same (row, column) at two scales: different encodings.
    assert not torch.allclose(pos[0], pos[196])


def test_weights_do_not_depend_on_image_size() -> None:
    a, b = tiny(size=224), tiny(size=(300, 200))
    b.load_state_dict(a.state_dict())  # strict: same keys and shapes
    assert set(a.state_dict()) == set(b.state_dict())


def test_grid_larger_than_max_grid_raises() -> None:
    with pytest.raises(ValueError, match="max_grid=64"):
        tiny(size=(1040, 224))
    assert tiny(size=(1040, 224), max_grid=65).token_counts[0] == 65 * 14


def test_mismatched_input_raises() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"\[B, 3, 224, 224\].*\[1, 3, 200, 224\]"):
        model(torch.randn(1, 3, 200, 224))
    with pytest.raises(ValueError, match="built for inputs"):
        model(torch.randn(1, 1, 224, 224))


def test_too_small_image_raises() -> None:
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        tiny(size=(15, 64))


def test_init() -> None:
    model = tiny()
    assert torch.all(model.patch_embed.bias == 0)
    assert torch.all(model.encoder.layers[0].self_attn.in_proj_bias == 0)
    for p in (model.patch_embed.weight, model.row_embed, model.encoder.layers[0].linear1.weight):
        assert p.abs().max() <= 0.04 + 1e-6  # truncated at 2 std
        assert 0.01 < p.std() < 0.03


def test_eval_is_deterministic_and_train_uses_dropout() -> None:
    model = tiny(size=32)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x).embedding, model(x).embedding)
    model.train()
    assert not torch.allclose(model(x).embedding, model(x).embedding)


def test_low_precision_forward() -> None:
    # The antialiased resize has no CPU bfloat16 kernel; the model must still run in bfloat16 end to end.
    model = tiny(size=(64, 48)).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 48, dtype=torch.bfloat16))
    assert out.embedding.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
