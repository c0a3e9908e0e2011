"""The hot loop: one optimisation step per batch, every per-step choice read from precomputed tensors.

Nothing here does per-sample Python work or synchronises with the GPU every step: running sums, the first
non-finite step and its loss components are kept in device tensors and read back every ``sync_every`` steps
(every step on CPU, where it is free) and at the end of an epoch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from rich.progress import Progress, TaskID
from torch import Tensor, nn

from models import PreprocessSpec, normalize
from training import distributed
from training.augment import BatchAugment
from training.batches import BatchSource
from training.losses import MultiLoss
from training.schedule import LOSS_NAMES, Schedule

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """A non-finite loss; names the step, the epoch, the learning rate and every loss component."""

    def __init__(self, step: int, epoch: int, lr: float, components: dict[str, float], weights: list[float]) -> None:
        self.step, self.epoch, self.components = step, epoch, components
        parts = ", ".join(f"{k}={v:.6g} (weight {w:g})" for (k, v), w in zip(components.items(), weights, strict=True))
        super().__init__(
            f"non-finite loss at step {step} (epoch {epoch + 1}, lr {lr:.3g}): {parts}. Lower optim.lr0, "
            "enable optim.grad_clip or check the data; the last saved training state predates this step."
        )


@dataclass
class Accumulator:
    """Device-side running sums of one epoch (restorable from a training state)."""

    device: torch.device
    loss: Tensor = field(init=False)
    components: Tensor = field(init=False)
    correct: Tensor = field(init=False)
    samples: int = 0
    steps: int = 0

    def __post_init__(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.components = torch.zeros(len(LOSS_NAMES), dtype=torch.float64, device=self.device)
        self.correct = torch.zeros((), dtype=torch.float64, device=self.device)

    def to_json(self) -> dict[str, object]:
        return {
            "loss": float(self.loss),
            "components": [float(v) for v in self.components.tolist()],
            "correct": float(self.correct),
            "samples": self.samples,
            "steps": self.steps,
        }

    def load(self, data: dict, *, counts: bool = True) -> None:
        """Restore saved sums. ``counts=False`` (ranks other than 0 of a distributed run): the saved losses are
        already means over ranks and are restored everywhere, the saved sample counts only once."""
        self.loss.fill_(data["loss"])
        self.components.copy_(torch.tensor(data["components"], dtype=torch.float64))
        self.correct.fill_(data["correct"] if counts else 0.0)
        self.samples = int(data["samples"]) if counts else 0
        self.steps = int(data["steps"])

    def reduced(self) -> Accumulator:
        """The epoch over every rank (a collective; ``self`` when not distributed): losses averaged over ranks
        (each is a mean over an equal per-rank batch), correct answers and samples summed."""
        n = distributed.world_size()
        if n == 1:
            return self
        k = len(LOSS_NAMES)
        extra = torch.tensor([float(self.samples)], dtype=torch.float64, device=self.device)
        buf = distributed.all_reduce_(torch.cat([self.loss.view(1), self.components, self.correct.view(1), extra]))
        out = Accumulator(self.device)
        out.loss, out.components, out.correct = buf[0] / n, buf[1 : 1 + k] / n, buf[1 + k]
        out.samples, out.steps = round(float(buf[2 + k])), self.steps
        return out

    def summary(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        comps = (self.components / steps).tolist()
        return {
            "loss": float(self.loss) / steps,
            **{name: float(v) for name, v in zip(LOSS_NAMES, comps, strict=True)},
            "train_accuracy": float(self.correct) / max(self.samples, 1),
        }


@dataclass
class StepContext:
    """Everything a step needs, built once by the trainer."""

    model: nn.Module  # possibly torch.compile'd
    optimizer: torch.optim.Optimizer
    loss_fn: MultiLoss
    augment: BatchAugment
    schedule: Schedule
    source: BatchSource
    spec: PreprocessSpec
    device: torch.device
    seed: int
    multi_label: bool
    amp: bool = False
    cpu_bf16: bool = False
    channels_last: bool = False
    grad_clip: float | None = None
    sync_every: int = 1
    lr: list[float] = field(init=False)
    weights: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.lr = self.schedule.lr.tolist()
        self.weights = self.schedule.weights.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]


class Loop:
    """Runs steps ``[start, end)`` of one epoch; ``after_step(step)`` is called after each completed step."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        dev = ctx.device
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=dev)
        self._bad_components = torch.zeros(len(LOSS_NAMES), device=dev)
        self.images_per_second = 0.0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.ctx.amp and self.ctx.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if self.ctx.cpu_bf16 and self.ctx.device.type == "cpu":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, step: int, batch_index: int, acc: Accumulator) -> None:
        c = self.ctx
        images, labels = c.source.batch(batch_index)
        x = c.augment(normalize(images, c.spec))
        if c.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = c.lr[step]
        for group in c.optimizer.param_groups:
            group["lr"] = lr
        with self._autocast():
            out = c.model(x)
        # The losses (pair mining, margins, softmax) run in fp32 whatever the forward ran in.
        out = type(out)(*(t.float() for t in out))
        result = c.loss_fn(out, labels, c.weights[step], x)
        c.optimizer.zero_grad(set_to_none=True)
        result.total.backward()
        if c.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(c.params, c.grad_clip)
        c.optimizer.step()
        # Book-keeping stays on the device.
        finite = torch.isfinite(result.total)
        first = ~finite & (self._bad_step < 0)
        self._bad_step = torch.where(first, step, self._bad_step)
        self._bad_components = torch.where(first, result.components.float(), self._bad_components)
        acc.loss += result.total.detach()
        acc.components += result.components
        logits = out.logits.detach()
        if c.multi_label:
            acc.correct += ((logits > 0) == labels.bool()).float().mean(dim=1).sum()
        else:
            acc.correct += (logits.argmax(dim=1) == labels).sum()
        acc.samples += int(labels.shape[0])
        acc.steps += 1

    def check_finite(self) -> None:
        """Raise :class:`TrainingDivergedError` if any step so far had a non-finite loss (a host sync)."""
        # Distributed: every rank must stop together (a rank left alone would wait in the next collective).
        bad = int(distributed.all_reduce_(self._bad_step.clone(), "max"))
        if bad >= 0:
            c = self.ctx
            comps = dict(zip(LOSS_NAMES, self._bad_components.tolist(), strict=True))
            weights = c.schedule.weights[bad].tolist()
            raise TrainingDivergedError(bad, bad // c.schedule.steps_per_epoch, c.lr[bad], comps, weights)

    def run_epoch(
        self,
        epoch: int,
        start: int,
        end: int,
        acc: Accumulator,
        *,
        after_step: Callable[[int], None] | None = None,
        progress: Progress | None = None,
        task: TaskID | None = None,
    ) -> None:
        """Steps ``start..end-1`` (absolute step numbers) of ``epoch``."""
        c = self.ctx
        spe = c.schedule.steps_per_epoch
        c.model.train()
        c.source.set_epoch(c.seed, epoch)
        t0, seen0, last_sync = time.perf_counter(), acc.samples, start
        for step in range(start, end):
            self.step(step, step - epoch * spe, acc)
            done = step + 1
            if done - last_sync >= c.sync_every or done == end:
                self.check_finite()
                last_sync = done
                elapsed = time.perf_counter() - t0
                self.images_per_second = (acc.samples - seen0) / elapsed if elapsed > 0 else 0.0
                if progress is not None and task is not None:
                    s = acc.summary()
                    progress.update(
                        task,
                        completed=done,
                        stats=f"epoch {epoch + 1} loss {s['loss']:.4f} acc {s['train_accuracy']:.3f} "
                        f"lr {c.lr[step]:.2e} {self.images_per_second:,.0f} img/s",
                    )
            if after_step is not None:
                after_step(step)


__all__ = ["Accumulator", "Loop", "StepContext", "TrainingDivergedError"]
