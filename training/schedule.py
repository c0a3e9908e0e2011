"""Precomputed per-step schedules: learning rate and loss weights for every optimisation step of a run.

The training loop indexes ``schedule.lr[step]`` and ``schedule.weights[step]``; it never asks "which phase are
we in?". Phases, warm-up and decay therefore live here, in one place that the tests check against the
formulas.

The MS-ViT recipe (paper 003, §3.2-4.3) trains in phases; inside phase ``p`` (epochs ``[s_p, s_p + L_p)``,
``t`` = fractional epoch counted from the start of the run) the learning rate is

    lr(t) = lr0 * decay_p ** ((t - s_p) / L_p)

with the paper's ``decay = 1/4, 1/16, 1/64`` and ``L = 70``: phase 1 ``lr0 (1/4)^(t/70)``, phase 2
``lr0 (1/16)^((t-70)/70)``, phase 3 ``lr0 (1/64)^((t-140)/70)``. Read literally (as we do), the rate restarts
at
``lr0`` at the start of every phase and decays faster in later phases.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

LOSS_NAMES = ("ce", "contrastive", "triplet", "distill")
ScheduleKind = Literal["phased", "constant", "cosine", "onecycle"]


@dataclass(frozen=True)
class Phase:
    """One training phase: its length in epochs, the per-phase LR decay base and the loss weights."""

    epochs: float
    decay: float = 1.0
    weights: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)  # (ce, contrastive, triplet, distill)

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"phase epochs must be > 0, got {self.epochs}")
        if not self.decay > 0:
            raise ValueError(f"phase decay base must be > 0, got {self.decay}")
        if len(self.weights) != len(LOSS_NAMES) or min(self.weights) < 0:
            raise ValueError(f"phase weights must be 4 non-negative numbers {LOSS_NAMES}, got {self.weights}")


# Our default phases for the MS-ViT recipe. From the paper (003, §4): three phases of 70 epochs and the LR decay
# bases 1/4, 1/16, 1/64 of its equations (2)-(4). OUR CHOICE: the loss weights. The paper's weights are in its
# Table 1, which is not in the text we have; these numbers only follow its prose (metric losses weigh most at
# first, cross-entropy rises later), so they are named as ours, not the paper's.
OUR_PHASES: tuple[Phase, ...] = (
    Phase(70, 1 / 4, (0.2, 1.0, 1.0, 0.0)),
    Phase(70, 1 / 16, (0.6, 0.5, 0.5, 0.0)),
    Phase(70, 1 / 64, (1.0, 0.1, 0.1, 0.0)),
)


@dataclass(frozen=True)
class Schedule:
    """``lr[step]`` (float64, CPU) and ``weights[step] = (w_ce, w_contrastive, w_triplet, w_distill)``."""

    lr: torch.Tensor  # [S] float64
    weights: torch.Tensor  # [S, 4] float32
    phase: torch.Tensor  # [S] int64, 0-based phase index of each step
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return int(self.lr.shape[0])

    @property
    def active(self) -> tuple[bool, ...]:
        """Which loss components have a non-zero weight at some step (the others are never built)."""
        return tuple(bool(v) for v in (self.weights > 0).any(dim=0).tolist())

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def digest(self) -> str:
        """Identity hash: a resumed run must continue the very same schedule."""
        h = hashlib.sha256()
        h.update(str(self.steps_per_epoch).encode())
        for t in (self.lr, self.weights, self.phase):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def scale_phases(phases: Sequence[Phase], epochs: float) -> tuple[Phase, ...]:
    """Stretch or shrink the phases proportionally so that they last ``epochs`` in total (short test runs)."""
    total = sum(p.epochs for p in phases)
    if math.isclose(total, epochs):
        return tuple(phases)
    return tuple(Phase(p.epochs * epochs / total, p.decay, p.weights) for p in phases)


def _epoch_grid(phases: Sequence[Phase], steps_per_epoch: int) -> tuple[np.ndarray, np.ndarray, int]:
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if not phases:
        raise ValueError("a schedule needs at least one phase")
    bounds = np.cumsum([0.0] + [p.epochs for p in phases])
    total_steps = round(bounds[-1] * steps_per_epoch)
    if total_steps < 1:
        raise ValueError(f"the phases last {bounds[-1]} epochs: less than one step")
    t = np.arange(total_steps, dtype=np.float64) / steps_per_epoch
    # Step s belongs to the phase whose [start, end) holds its start time t.
    phase = np.clip(np.searchsorted(bounds, t, side="right") - 1, 0, len(phases) - 1)
    return t, phase, total_steps


def phased_lr(t: np.ndarray | float, phases: Sequence[Phase], lr0: float) -> np.ndarray:
    """The paper's piecewise exponential decay at fractional epoch(s) ``t``; ``t`` = end of the run is
    allowed."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    bounds = np.cumsum([0.0] + [p.epochs for p in phases])
    # A phase owns [start, end); the very end of the run belongs to the last phase.
    phase = np.clip(np.searchsorted(bounds, t, side="right") - 1, 0, len(phases) - 1)
    start = bounds[phase]
    length = np.array([p.epochs for p in phases])[phase]
    decay = np.array([p.decay for p in phases])[phase]
    return lr0 * np.power(decay, (t - start) / length)


def plain_lr(
    t: np.ndarray,
    total_epochs: float,
    lr0: float,
    kind: ScheduleKind,
    *,
    warmup_epochs: float = 0.0,
    min_lr_fraction: float = 0.0,
    onecycle_div: float = 25.0,
    onecycle_final_div: float = 1e4,
) -> np.ndarray:
    """Constant / cosine / one-cycle learning rate at fractional epochs ``t`` (CNN recipes).

    ``constant`` and ``cosine`` ramp linearly from 0 during ``warmup_epochs``; ``cosine`` then anneals to
    ``lr0 * min_lr_fraction``. ``onecycle`` ramps from ``lr0 / onecycle_div`` to ``lr0`` (cosine-shaped, as in
    Smith's one-cycle policy) over ``warmup_epochs`` then anneals to ``lr0 / onecycle_final_div``.
    """
    if not 0 <= warmup_epochs < total_epochs:
        raise ValueError(
            f"schedule warm-up of {warmup_epochs} epochs does not fit a run of {total_epochs} epochs "
            f"(lower schedule.warmup_epochs, or use schedule.warmup_fraction to follow --epochs)"
        )
    warm = np.clip(t / warmup_epochs, 0.0, 1.0) if warmup_epochs > 0 else np.ones_like(t)
    after = np.clip((t - warmup_epochs) / (total_epochs - warmup_epochs), 0.0, 1.0)
    cos_down = 0.5 * (1.0 + np.cos(np.pi * after))  # 1 -> 0 over the post-warm-up part
    if kind == "constant":
        return lr0 * warm
    if kind == "cosine":
        floor = lr0 * min_lr_fraction
        return warm * (floor + (lr0 - floor) * cos_down)
    if kind == "onecycle":
        start, end = lr0 / onecycle_div, lr0 / onecycle_final_div
        up = start + (lr0 - start) * 0.5 * (1.0 - np.cos(np.pi * warm))
        down = end + (lr0 - end) * cos_down
        return np.where(t < warmup_epochs, up, down)
    raise ValueError(f"unknown schedule kind {kind!r}; expected phased, constant, cosine or onecycle")


def build_schedule(
    phases: Sequence[Phase] | None,
    steps_per_epoch: int,
    *,
    lr0: float,
    kind: ScheduleKind = "phased",
    warmup_epochs: float = 0.0,
    min_lr_fraction: float = 0.0,
    onecycle_div: float = 25.0,
    onecycle_final_div: float = 1e4,
) -> Schedule:
    """Every step's LR and loss weights. ``phases=None`` gives :data:`OUR_PHASES` (the paper's 3 x 70
    epochs and LR bases, our loss weights).

    With ``kind="phased"`` the LR follows :func:`phased_lr`; the other kinds shape the LR over the whole run
    and
    the phases only set the loss weights.
    """
    phases = tuple(OUR_PHASES if phases is None else phases)
    if not lr0 > 0:
        raise ValueError(f"lr0 must be > 0, got {lr0}")
    t, phase, _ = _epoch_grid(phases, steps_per_epoch)
    if kind == "phased":
        lr = phased_lr(t, phases, lr0)
    else:
        total = float(sum(p.epochs for p in phases))
        lr = plain_lr(
            t,
            total,
            lr0,
            kind,
            warmup_epochs=warmup_epochs,
            min_lr_fraction=min_lr_fraction,
            onecycle_div=onecycle_div,
            onecycle_final_div=onecycle_final_div,
        )
    table = np.array([p.weights for p in phases], dtype=np.float32)
    return Schedule(
        lr=torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float64)),
        weights=torch.from_numpy(np.ascontiguousarray(table[phase])),
        phase=torch.from_numpy(phase.astype(np.int64)),
        steps_per_epoch=steps_per_epoch,
    )


__all__ = [
    "LOSS_NAMES",
    "OUR_PHASES",
    "Phase",
    "Schedule",
    "ScheduleKind",
    "build_schedule",
    "phased_lr",
    "plain_lr",
    "scale_phases",
]
