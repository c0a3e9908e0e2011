"""The multi-loss: miners are correct, components are weighted per step, and training lowers the loss."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses

from models import ModelOutput, PreprocessSpec, build, save_checkpoint
from training.config import LossConfig
from training.losses import MultiLabelPairMiner, MultiLabelTripletMiner, MultiLoss, multilabel_masks

ALL = (True, True, True, False)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Two shared cores: OpenMP threads waiting on each other make tiny convolutions 100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def multi_hot(rows: list[list[int]], c: int) -> torch.Tensor:
    y = torch.zeros(len(rows), c, dtype=torch.uint8)
    for i, r in enumerate(rows):
        y[i, r] = 1
    return y


LABELS = multi_hot([[0], [0, 1], [1], [2], [], [2, 3], [3], [0, 3]], 4)


def test_multilabel_masks_match_brute_force() -> None:
    pos, neg = multilabel_masks(LABELS)
    sets = [set(torch.nonzero(r).flatten().tolist()) for r in LABELS]
    for i in range(len(sets)):
        for j in range(len(sets)):
            shared = bool(sets[i] & sets[j])
            assert bool(pos[i, j]) == (shared and i != j)
            assert bool(neg[i, j]) == (not shared and i != j)


def test_triplet_miner_returns_only_valid_triplets() -> None:
    emb = F.normalize(torch.randn(8, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    miner = MultiLabelTripletMiner(margin=10.0, type_of_triplets="all")  # margin this large keeps every triplet
    a, p, n = miner(emb, LABELS)
    sets = [set(torch.nonzero(r).flatten().tolist()) for r in LABELS]
    expected = {
        (i, j, k)
        for i in range(8)
        for j in range(8)
        for k in range(8)
        if i != j and i != k and sets[i] & sets[j] and not sets[i] & sets[k]
    }
    assert set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == expected
    capped = MultiLabelTripletMiner(margin=10.0, type_of_triplets="all", max_triplets=7)(emb, LABELS)
    assert len(capped[0]) == 7
    with pytest.raises(ValueError, match="multi-hot"):
        miner(emb, torch.zeros(8, dtype=torch.long))


def test_pair_miner_and_pml_losses_accept_its_tuples() -> None:
    emb = F.normalize(torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), dim=1).requires_grad_()
    a1, p, a2, n = MultiLabelPairMiner(epsilon=None)(emb, LABELS)
    pos, neg = multilabel_masks(LABELS)
    assert len(a1) == int(pos.sum()) and len(a2) == int(neg.sum())
    hard = MultiLabelPairMiner(epsilon=0.1)(emb, LABELS)
    assert len(hard[0]) <= len(a1) and len(hard[2]) <= len(a2)
    loss = losses.ContrastiveLoss(pos_margin=1, neg_margin=0)(emb, indices_tuple=(a1, p, a2, n))
    loss.backward()
    assert torch.isfinite(loss) and emb.grad is not None and emb.grad.abs().sum() > 0


def test_weights_select_components_and_inactive_ones_are_not_built() -> None:
    torch.manual_seed(0)
    out = ModelOutput(torch.randn(16, 8), torch.randn(16, 3))
    y = torch.arange(16) % 3
    ce_only = MultiLoss(LossConfig(), multi_label=False, active=(True, False, False, False), num_classes=3)
    assert ce_only.contrastive is None and ce_only.triplet is None and ce_only.teacher is None
    r = ce_only(out, y, torch.tensor([0.5, 0.0, 0.0, 0.0]))
    assert r.total.item() == pytest.approx(0.5 * F.cross_entropy(out.logits, y).item(), rel=1e-6)
    assert r.components[1:].abs().sum() == 0
    full = MultiLoss(LossConfig(), multi_label=False, active=ALL, num_classes=3)
    w = torch.tensor([0.2, 1.0, 0.7, 0.0])
    r = full(out, y, w)
    assert r.components[0].item() == pytest.approx(F.cross_entropy(out.logits, y).item(), rel=1e-6)
    assert r.components[1] > 0 and r.components[2] > 0
    assert r.total.item() == pytest.approx(float((w * r.components).sum()), rel=1e-6)
    with pytest.raises(ValueError, match="distill_teacher"):
        MultiLoss(LossConfig(), multi_label=False, active=(True, False, False, True), num_classes=3)


def _train_steps(multi_label: bool, active: tuple[bool, ...], weights: list[float], steps: int = 12) -> list[float]:
    torch.manual_seed(0)
    b, c = 32, 4
    x = torch.randn(b, 3, 8, 8)
    y = (torch.rand(b, c) < 0.35).to(torch.uint8) if multi_label else torch.arange(b) % c
    # Class-dependent images so there is something to learn.
    x = x + (y.float() @ torch.randn(c, 3 * 64)).view(b, 3, 8, 8) if multi_label else x + y.view(b, 1, 1, 1)
    model = build("mscfnet2", num_classes=c, in_channels=3, image_size=8, width=8)
    loss_fn = MultiLoss(LossConfig(triplet_type="all"), multi_label=multi_label, active=active, num_classes=c)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    w = torch.tensor(weights)
    history = []
    for _ in range(steps):
        r = loss_fn(model(x), y, w)
        opt.zero_grad()
        r.total.backward()
        opt.step()
        history.append(r.total.item())
    return history


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
@pytest.mark.parametrize(
    ("active", "weights"),
    [((True, False, False, False), [1.0, 0, 0, 0]), (ALL, [0.6, 0.5, 0.5, 0.0])],
    ids=["ce", "multiloss"],
)
def test_loss_decreases(multi_label: bool, active: tuple[bool, ...], weights: list[float]) -> None:
    h = _train_steps(multi_label, active, weights)
    assert all(torch.isfinite(torch.tensor(h)))
    assert sum(h[-3:]) / 3 < 0.8 * sum(h[:3]) / 3, h


@pytest.mark.parametrize("multi_label", [False, True])
def test_distillation_from_a_checkpoint(tmp_path, multi_label: bool) -> None:
    torch.manual_seed(0)
    spec = PreprocessSpec(image_size=(8, 8), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    teacher = build("mscfnet2", num_classes=3, in_channels=3, image_size=8, width=4)
    save_checkpoint(tmp_path / "teacher", teacher, class_names=["a", "b", "c"], preprocess=spec)
    cfg = LossConfig(distill_teacher=tmp_path / "teacher.safetensors", distill_temperature=2.0)
    student_spec = PreprocessSpec(image_size=(8, 8), channels=3, mean=(0.4,) * 3, std=(0.2,) * 3)
    loss = MultiLoss(cfg, multi_label=multi_label, active=(False, False, False, True), num_classes=3, spec=student_spec)
    x = torch.randn(4, 3, 8, 8)
    # The teacher sees the student's input re-normalised to its own statistics.
    raw = x * 0.2 + 0.4
    with torch.no_grad():
        expected = teacher.eval()((raw - 0.5) / 0.25).logits
    assert torch.allclose(loss.teacher(x), expected, atol=1e-5)
    out = ModelOutput(torch.randn(4, 4), expected.clone())
    y = torch.zeros(4, 3, dtype=torch.uint8) if multi_label else torch.zeros(4, dtype=torch.long)
    r = loss(out, y, torch.tensor([0.0, 0.0, 0.0, 1.0]), x)
    if multi_label:  # BCE against the teacher's own probabilities: its minimum, the entropy
        p = torch.sigmoid(expected / 2)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
        assert r.total.item() == pytest.approx(entropy.item(), rel=1e-4)
    else:  # identical logits: KL = 0
        assert r.total.item() == pytest.approx(0.0, abs=1e-5)


def test_class_weighting_balances_the_classes_and_keeps_the_scale() -> None:
    from training.losses import class_weights

    counts = [600, 100, 300]
    assert class_weights("none", counts, False) is None
    inv = class_weights("inverse", counts, False)
    sqrt = class_weights("sqrt_inverse", counts, False)
    assert inv is not None and sqrt is not None
    n = torch.tensor(counts, dtype=torch.float32)
    # Mean weight over the training images is 1; every class then carries the same total weight (inverse).
    assert torch.allclose((inv * n).sum() / n.sum(), torch.tensor(1.0))
    assert torch.allclose((sqrt * n).sum() / n.sum(), torch.tensor(1.0))
    assert torch.allclose(inv * n, (inv * n)[0].expand(3))
    assert inv[1] > sqrt[1] > sqrt[0] and inv[0] < sqrt[0]  # the rare class gains, the common one loses
    with pytest.raises(ValueError, match="single-label"):
        class_weights("inverse", counts, True)


def test_weighted_cross_entropy_is_used_by_the_multiloss() -> None:
    from training.config import LossConfig
    from training.losses import MultiLoss

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    out = ModelOutput(embedding=torch.randn(3, 4), logits=logits)
    w = torch.ones(4)
    plain = MultiLoss(LossConfig(), multi_label=False, active=(True, False, False, False), num_classes=2)
    weighted = MultiLoss(
        LossConfig(class_weighting="inverse"),
        multi_label=False,
        active=(True, False, False, False),
        num_classes=2,
        class_counts=[2, 1],
    )
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weighted.class_weights)
    assert torch.allclose(weighted(out, labels, w).total, expected)
    assert not torch.allclose(plain(out, labels, w).total, expected)
