"""Heat-maps of MSCFNet and the ViTs: exact decompositions sum to the cosine; a shared pasted patch is the peak."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from models.similarity_maps import Explainer, ExplainUnsupportedError, explain_pairs, location_contributions

EXACT = [
    ("mscfnet2", {}),  # the paper's head: flatten -> Linear -> ReLU
    ("mscfnet2", {"batch_norm": True, "embedding": "bn"}),  # the shipped demo's head (flatten -> Linear -> BN)
    ("mscfnet2", {"global_pool": True}),
    ("vit_tiny", {"pool": "mean", "patch_size": 4}),
    ("msvit_tiny", {"pool": "mean", "patch_size": 4}),  # tokens of 2 scales folded onto the 4x4 grid
]


def build(name: str, options: dict, *, statistics: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build(name, 3, image_size=16, **options).eval()
    for module in model.modules() if statistics else ():  # non-trivial eval statistics, as after training
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.running_mean.normal_()  # type: ignore[union-attr]
            module.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
    return model


@pytest.mark.parametrize(("name", "options"), EXACT)
def test_contributions_sum_to_the_embedding_and_maps_to_the_cosine(name: str, options: dict) -> None:
    model = build(name, options)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        embedding = model(x).embedding
        located = location_contributions(model, x)
    torch.testing.assert_close(located.parts.sum(dim=1), embedding, atol=1e-5, rtol=1e-5)
    cosines = F.cosine_similarity(embedding[:1], embedding[1:]).tolist()
    for pair, cosine in zip(explain_pairs(model, x[:1], x[1:]), cosines, strict=True):
        assert pair.exact and pair.method == "decomposition"
        assert pair.score == pytest.approx(cosine, abs=1e-5)
        assert pair.query.sum() == pytest.approx(pair.score, abs=1e-4)
        assert pair.result.sum() == pytest.approx(pair.score, abs=1e-4)


def pasted_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unrelated low-contrast noise images sharing one high-contrast 8x8 patch at rows 8-15, columns 4-11."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-0.3, 0.3, (2, 3, 16, 16))
    patch = rng.choice([-2.0, 2.0], (3, 8, 8))
    a[:, 8:16, 4:12] = patch
    b[:, 8:16, 4:12] = patch
    return torch.tensor(a[None], dtype=torch.float32), torch.tensor(b[None], dtype=torch.float32)


@pytest.mark.parametrize("options", [{}, {"batch_norm": True, "embedding": "bn"}])
def test_the_peak_lies_on_the_one_shared_patch(options: dict) -> None:
    model = build("mscfnet2", options, statistics=False)  # random statistics would shift every location alike
    on_patch = np.zeros((4, 4), dtype=bool)  # 4x4 grid of 4 px cells: the patch covers rows 2-3, columns 1-2
    on_patch[2:4, 1:3] = True
    for seed in range(3):
        pair = explain_pairs(model, *pasted_pair(seed))[0]
        for heat in (pair.query, pair.result):
            assert heat.shape == (4, 4)
            assert on_patch[np.unravel_index(int(heat.argmax()), heat.shape)], heat


def test_a_cls_vit_gets_grad_cam_maps() -> None:
    model = build("msvit_tiny", {"patch_size": 4})
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        embedding = model(x).embedding
    pairs = explain_pairs(model, x[:1], x[1:])
    for pair, cosine in zip(pairs, F.cosine_similarity(embedding[:1], embedding[1:]).tolist(), strict=True):
        assert pair.method == "grad-cam" and not pair.exact
        assert pair.score == pytest.approx(cosine, abs=1e-5)
        assert pair.query.shape == pair.result.shape == (4, 4)
        assert (pair.query >= 0).all() and (pair.result >= 0).all()
    with pytest.raises(ExplainUnsupportedError):
        location_contributions(model, x)


def test_the_explainer_loads_a_mean_pooled_vit_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = models.build("vit_tiny", 2, image_size=16, patch_size=4, pool="mean")
    spec = models.PreprocessSpec(image_size=(16, 16), channels=3, resize="stretch")
    path = models.save_checkpoint(tmp_path / "vit", model, class_names=["a", "b"], preprocess=spec)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    pairs = Explainer(path).explain(images[0], images[1:])
    assert [p.method for p in pairs] == ["decomposition"] * 2
    for pair in pairs:
        assert pair.query.shape == (4, 4) and pair.query.sum() == pytest.approx(pair.score, abs=1e-4)


def test_the_explainer_refuses_other_architectures(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = models.build("cnn5", 2, image_size=24)
    spec = models.PreprocessSpec(image_size=(24, 24), channels=3, resize="stretch")
    path = models.save_checkpoint(tmp_path / "cnn", model, class_names=["a", "b"], preprocess=spec)
    with pytest.raises(ExplainUnsupportedError, match="MSCFNet and the ViTs"):
        Explainer(path).explain(np.zeros((3, 24, 24), np.uint8), np.zeros((1, 3, 24, 24), np.uint8))


def test_vit_pool_must_be_cls_or_mean() -> None:
    with pytest.raises(ValueError, match="pool must be"):
        models.build("vit_tiny", 3, image_size=16, patch_size=4, pool="max")
