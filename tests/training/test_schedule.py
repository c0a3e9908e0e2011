"""Schedules match the paper's formulas exactly, at phase boundaries and mid-phase."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.schedule import OUR_PHASES, Phase, build_schedule, phased_lr, scale_phases

LR0 = 4e-4
SPE = 10  # steps per epoch


def paper_lr(t: float) -> float:
    """Equations (2)-(4) of paper 003, written out independently of the implementation."""
    if t < 70:
        return LR0 * (1 / 4) ** (t / 70)
    if t < 140:
        return LR0 * (1 / 16) ** ((t - 70) / 70)
    return LR0 * (1 / 64) ** ((t - 140) / 70)


@pytest.fixture(scope="module")
def default() -> torch.Tensor:
    """The default phases: the paper's lengths and LR bases, our loss weights."""
    return build_schedule(None, SPE, lr0=LR0)


@pytest.mark.parametrize("epoch", [0, 35, 69.9, 70, 105, 139.9, 140, 175, 209.9])
def test_paper_lr_matches_formula(default, epoch: float) -> None:
    step = round(epoch * SPE)
    assert default.lr[step].item() == pytest.approx(paper_lr(step / SPE), rel=1e-12)


def test_paper_lr_at_boundaries_is_exact(default) -> None:
    assert default.total_steps == 210 * SPE
    assert default.lr[0].item() == LR0
    assert default.lr[70 * SPE].item() == LR0  # each phase restarts at lr0 (literal reading of eq. 3-4)
    assert default.lr[140 * SPE].item() == LR0
    # Just before each boundary the LR approaches lr0 * base.
    assert default.lr[70 * SPE - 1].item() == pytest.approx(LR0 / 4 * 4 ** (1 / 700), rel=1e-12)
    # The end of the run (t = 210, a time rather than a step) is the end of phase 3: lr0 / 64.
    assert phased_lr(210.0, OUR_PHASES, LR0)[0] == pytest.approx(LR0 / 64, rel=1e-12)
    assert phased_lr(70.0, OUR_PHASES, LR0)[0] == pytest.approx(LR0, rel=1e-12)
    assert phased_lr(35.0, OUR_PHASES, LR0)[0] == pytest.approx(LR0 * 0.5, rel=1e-12)  # (1/4)^(1/2)
    assert phased_lr(175.0, OUR_PHASES, LR0)[0] == pytest.approx(LR0 / 8, rel=1e-12)  # (1/64)^(1/2)


def test_our_default_weights_by_phase(default) -> None:
    expected = {0: (0.2, 1.0, 1.0, 0.0), 70: (0.6, 0.5, 0.5, 0.0), 140: (1.0, 0.1, 0.1, 0.0)}
    for start, w in expected.items():
        for epoch in (start, start + 35, start + 69.9):
            step = round(epoch * SPE)
            assert default.weights[step].tolist() == pytest.approx(w)
    assert default.weights[70 * SPE - 1].tolist() == pytest.approx(expected[0])
    assert default.phase[[0, 700, 1400, 2099]].tolist() == [0, 1, 2, 2]
    assert default.active == (True, True, True, False)


def test_generalised_phases_and_rescaling() -> None:
    phases = (Phase(2, 0.5, (1, 0, 0, 0)), Phase(3, 0.1, (0, 1, 0, 0)))
    s = build_schedule(phases, 4, lr0=1.0)
    assert s.total_steps == 20
    t = np.arange(20) / 4
    expected = np.where(t < 2, 0.5 ** (t / 2), 0.1 ** ((t - 2) / 3))
    np.testing.assert_allclose(s.lr.numpy(), expected, rtol=1e-12)
    assert s.active == (True, True, False, False)
    scaled = scale_phases(OUR_PHASES, 6)
    assert [p.epochs for p in scaled] == [2, 2, 2]
    assert [p.decay for p in scaled] == [p.decay for p in OUR_PHASES]


def test_plain_schedules() -> None:
    one = (Phase(10),)
    const = build_schedule(one, 5, lr0=0.1, kind="constant")
    assert torch.all(const.lr == 0.1)
    warm = build_schedule(one, 5, lr0=0.1, kind="constant", warmup_epochs=2)
    assert warm.lr[0].item() == 0.0 and warm.lr[5].item() == pytest.approx(0.05) and warm.lr[10].item() == 0.1
    cos = build_schedule(one, 5, lr0=0.1, kind="cosine", min_lr_fraction=0.1)
    assert cos.lr[0].item() == pytest.approx(0.1)
    assert cos.lr[25].item() == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert torch.all(cos.lr[1:] <= cos.lr[:-1])
    oc = build_schedule(one, 5, lr0=0.1, kind="onecycle", warmup_epochs=3, onecycle_div=25, onecycle_final_div=1e4)
    assert oc.lr[0].item() == pytest.approx(0.1 / 25)
    assert oc.lr[15].item() == pytest.approx(0.1)  # peak at the end of the warm-up
    assert int(oc.lr.argmax()) == 15
    assert oc.lr[-1].item() < 0.1 / 25 and oc.lr[-1].item() > 0.1 / 1e4


def test_digest_identifies_the_schedule() -> None:
    a = build_schedule(None, 3, lr0=1e-3)
    assert a.digest() == build_schedule(None, 3, lr0=1e-3).digest()
    assert a.digest() != build_schedule(None, 3, lr0=2e-3).digest()
    assert a.digest() != build_schedule(None, 4, lr0=1e-3).digest()


def test_invalid_phases() -> None:
    with pytest.raises(ValueError, match="epochs"):
        Phase(0)
    with pytest.raises(ValueError, match="weights"):
        Phase(1, 1.0, (1.0, -1.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="warm-up"):
        build_schedule((Phase(2),), 2, lr0=1.0, kind="cosine", warmup_epochs=2)
