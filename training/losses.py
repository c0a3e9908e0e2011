"""The dynamic multi-loss: cross-entropy + contrastive + triplet (+ distillation), weighted per step.

Metric losses and single-label miners are pytorch-metric-learning's, on the L2-normalised embedding with cosine
similarity. pml's miners require 1-D class labels, so multi-label batches (multi-hot ``[B, C]``) get the two
pml-compatible miners below: a positive shares at least one label with the anchor, a negative shares none. They
return pml ``indices_tuple``s, which pml's losses accept in place of labels.
Under ``torchrun`` the metric losses see the global batch (:mod:`training.distributed`).

What is the MS-ViT paper's (003, §3.2) and what is ours. The paper gives the weighted sum
``W_CE L_CE + W_Contrastive L_Contrastive + W_Triplet L_Triplet`` with weights changing by phase, citing the
contrastive and triplet losses; its weight values are in a Table 1 absent from our text. OUR CHOICES, not the
paper's: the per-phase weights (``training.schedule.OUR_PHASES`` and the multiloss configs), cosine similarity on
L2-normalised embeddings (the paper names no distance), the contrastive margins (positives pulled to cosine 1,
negatives pushed below 0), multi-similarity pair mining (epsilon 0.1), the triplet margin 0.1 over all triplets,
the multi-label positive/negative rule above, label smoothing, and the optional distillation term.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.miners import BaseMiner
from torch import Tensor, nn

from models import ModelOutput, PreprocessSpec, load_checkpoint
from training import distributed
from training.config import LossConfig
from training.schedule import LOSS_NAMES

logger = logging.getLogger(__name__)


def multilabel_masks(labels: Tensor, ref_labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(pos, neg)`` bool ``[B, R]``: share >= 1 label / share none. The diagonal is excluded without
    refs."""
    ref = labels if ref_labels is None else ref_labels
    shared = labels.float() @ ref.float().T
    pos = shared > 0
    neg = shared == 0
    if ref_labels is None:
        eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
        pos &= ~eye
        neg &= ~eye
    return pos, neg


class _MultiLabelMiner(BaseMiner):
    """pml's BaseMiner with its 1-D label check replaced by a multi-hot one."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("distance", distances.CosineSimilarity())
        super().__init__(**kwargs)

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        self.reset_stats()
        if labels.ndim != 2 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"multi-label miner expects multi-hot labels [B, C] with B={embeddings.shape[0]}, got "
                f"{tuple(labels.shape)}"
            )
        with torch.no_grad():
            same = ref_emb is None
            ref_emb = embeddings if ref_emb is None else ref_emb
            ref_labels = labels if ref_labels is None else ref_labels
            pos, neg = multilabel_masks(labels, None if same else ref_labels)
            out = self.mine_masks(embeddings, ref_emb, pos, neg)
        self.output_assertion(out)
        return out

    def mine_masks(self, emb: Tensor, ref: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError


class MultiLabelPairMiner(_MultiLabelMiner):
    """Pairs ``(a1, p, a2, n)``; with ``epsilon`` the multi-similarity rule keeps only the informative ones.

    The rule (as pml's MultiSimilarityMiner, per anchor): keep a positive less similar than the hardest
    negative
    plus epsilon, and a negative more similar than the hardest positive minus epsilon.
    """

    def __init__(self, epsilon: float | None = 0.1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def mine_masks(self, emb: Tensor, ref: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, ...]:
        if self.epsilon is not None:
            mat = self.distance(emb, ref)
            inf = torch.finfo(mat.dtype).max
            sign = 1.0 if self.distance.is_inverted else -1.0  # compare as similarities
            sim = mat * sign
            hardest_neg = sim.masked_fill(~neg, -inf).amax(dim=1, keepdim=True)
            hardest_pos = sim.masked_fill(~pos, inf).amin(dim=1, keepdim=True)
            pos = pos & (sim - self.epsilon < hardest_neg)
            neg = neg & (sim + self.epsilon > hardest_pos)
        a1, p = torch.where(pos)
        a2, n = torch.where(neg)
        return a1, p, a2, n


class MultiLabelTripletMiner(_MultiLabelMiner):
    """Triplets ``(a, p, n)`` violating ``margin`` (``all`` / ``hard`` / ``semihard`` as pml's
    TripletMarginMiner).

    All ``B^3`` candidates are scored at once (memory grows as ``B^3``: fine for the batch sizes metric
    learning
    uses); when more than ``max_triplets`` qualify, a random subset is kept.
    """

    def __init__(
        self,
        margin: float = 0.1,
        type_of_triplets: str = "semihard",
        max_triplets: int = 65536,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if type_of_triplets not in ("all", "hard", "semihard"):
            raise ValueError(f"type_of_triplets must be all, hard or semihard, got {type_of_triplets!r}")
        self.margin = margin
        self.type_of_triplets = type_of_triplets
        self.max_triplets = max_triplets

    def mine_masks(self, emb: Tensor, ref: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, ...]:
        mat = self.distance(emb, ref)
        ap, an = mat.unsqueeze(2), mat.unsqueeze(1)
        margin = ap - an if self.distance.is_inverted else an - ap  # > 0: the triplet is already satisfied
        keep = pos.unsqueeze(2) & neg.unsqueeze(1) & (margin <= self.margin)
        if self.type_of_triplets == "hard":
            keep &= margin <= 0
        elif self.type_of_triplets == "semihard":
            keep &= margin > 0
        a, p, n = torch.where(keep)
        if a.numel() > self.max_triplets:
            pick = torch.randperm(a.numel(), device=a.device)[: self.max_triplets]
            a, p, n = a[pick], p[pick], n[pick]
        return a, p, n


class LossResult(NamedTuple):
    total: Tensor  # scalar, differentiable
    components: Tensor  # [4] detached: (ce, contrastive, triplet, distill); 0 for components not built


class Teacher(nn.Module):
    """A frozen msir checkpoint used for distillation; re-normalises the student's input when statistics
    differ."""

    def __init__(self, path: Path, student_spec: PreprocessSpec) -> None:
        super().__init__()
        loaded = load_checkpoint(path)
        spec = loaded.meta.preprocess
        if spec.image_size != student_spec.image_size or spec.channels != student_spec.channels:
            raise ValueError(
                f"distillation teacher {path}: input {spec.channels}x{spec.image_size} differs from the "
                f"student's {student_spec.channels}x{student_spec.image_size}"
            )
        self.model = loaded.model.requires_grad_(False)
        s_mean, s_std = torch.tensor(student_spec.mean), torch.tensor(student_spec.std)
        t_mean, t_std = torch.tensor(spec.mean), torch.tensor(spec.std)
        # x_t = (x_s * std_s + mean_s - mean_t) / std_t, per channel.
        self.register_buffer("scale", (s_std / t_std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - t_mean) / t_std).view(1, -1, 1, 1), persistent=False)
        self.num_classes = int(loaded.meta.model["num_classes"])

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        self.model.eval()
        return self.model(x * self.scale + self.shift).logits


def class_weights(kind: str, counts: Sequence[int] | None, multi_label: bool) -> Tensor | None:
    """Per-class cross-entropy weights ``(n / n_c) ** power`` (1 for inverse, 0.5 for sqrt_inverse), scaled so
    that the weight averaged over the training images is 1 (the loss keeps its scale). ``None`` for "none"."""
    if kind == "none":
        return None
    if multi_label:
        raise ValueError("loss.class_weighting applies to single-label data only")
    if counts is None or not len(counts):
        raise ValueError("loss.class_weighting needs the training set's class counts")
    n = torch.tensor([float(c) for c in counts]).clamp_min(1.0)
    w = (n.sum() / n) ** (1.0 if kind == "inverse" else 0.5)
    return w / ((w * n).sum() / n.sum())


class MultiLoss(nn.Module):
    """``total = w · (L_ce, L_contrastive, L_triplet, L_distill)`` with ``w`` the schedule row of this step.

    Components whose weight is zero over the whole schedule (``active[i] == False``) are never built nor
    computed; the others are computed every step, so phase changes are pure data (no branch in the loop).
    """

    def __init__(
        self,
        cfg: LossConfig,
        *,
        multi_label: bool,
        active: tuple[bool, ...],
        num_classes: int,
        spec: PreprocessSpec | None = None,
        class_counts: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(active) != len(LOSS_NAMES):
            raise ValueError(f"active must have {len(LOSS_NAMES)} flags {LOSS_NAMES}, got {active}")
        self.multi_label = multi_label
        self.active = tuple(active)
        self.label_smoothing = cfg.label_smoothing
        self.class_weights: Tensor | None
        self.register_buffer("class_weights", class_weights(cfg.class_weighting, class_counts, multi_label))
        self.temperature = cfg.distill_temperature
        cos = distances.CosineSimilarity
        self.contrastive = self.pair_miner = self.triplet = self.triplet_miner = None
        if active[1]:
            self.contrastive = losses.ContrastiveLoss(
                pos_margin=cfg.contrastive_pos_margin, neg_margin=cfg.contrastive_neg_margin, distance=cos()
            )
            if multi_label:
                self.pair_miner = MultiLabelPairMiner(epsilon=cfg.pair_miner_epsilon, distance=cos())
            elif cfg.pair_miner_epsilon is not None:
                self.pair_miner = miners.MultiSimilarityMiner(epsilon=cfg.pair_miner_epsilon, distance=cos())
        if active[2]:
            self.triplet = losses.TripletMarginLoss(margin=cfg.triplet_margin, distance=cos())
            if multi_label:
                self.triplet_miner = MultiLabelTripletMiner(
                    cfg.triplet_margin, cfg.triplet_type, cfg.max_triplets, distance=cos()
                )
            else:
                self.triplet_miner = miners.TripletMarginMiner(
                    margin=cfg.triplet_margin, type_of_triplets=cfg.triplet_type, distance=cos()
                )
        self.teacher: Teacher | None = None
        if active[3]:
            if cfg.distill_teacher is None or spec is None:
                raise ValueError("the schedule gives distillation a weight but loss.distill_teacher is not set")
            self.teacher = Teacher(cfg.distill_teacher, spec)
            if self.teacher.num_classes != num_classes:
                raise ValueError(
                    f"distillation teacher {cfg.distill_teacher} has {self.teacher.num_classes} classes, the "
                    f"student {num_classes}"
                )
        logger.info("losses built: %s", ", ".join(n for n, a in zip(LOSS_NAMES, active, strict=True) if a))

    def _metric(self, loss_fn: nn.Module, miner: nn.Module | None, emb: Tensor, labels: Tensor) -> Tensor:
        if self.multi_label:
            # pml's losses take the mined tuple instead of (1-D) labels.
            return loss_fn(emb, indices_tuple=miner(emb, labels))  # type: ignore[misc]
        return loss_fn(emb, labels, miner(emb, labels) if miner is not None else None)

    def forward(self, out: ModelOutput, labels: Tensor, weights: Tensor, inputs: Tensor | None = None) -> LossResult:
        logits = out.logits.float()
        zero = logits.new_zeros(())
        parts = [zero, zero, zero, zero]
        if self.active[0]:
            if self.multi_label:
                parts[0] = F.binary_cross_entropy_with_logits(logits, labels.float())
            else:
                parts[0] = F.cross_entropy(
                    logits, labels, weight=self.class_weights, label_smoothing=self.label_smoothing
                )
        if self.contrastive is not None or self.triplet is not None:
            emb = F.normalize(out.embedding.float(), dim=1)
            # Under torchrun, pairs and triplets are mined over the global batch (every rank's embeddings, the
            # local slice differentiable); the world-size gradient scale makes DDP's average equal one process's
            # gradient on the whole batch.
            world = distributed.world_size()
            metric_labels = labels
            if world > 1:
                emb, metric_labels = distributed.gather_with_grad(emb), distributed.gather(labels)
            if self.contrastive is not None:
                loss = self._metric(self.contrastive, self.pair_miner, emb, metric_labels)
                parts[1] = distributed.scale_grad(loss, world)
            if self.triplet is not None:
                loss = self._metric(self.triplet, self.triplet_miner, emb, metric_labels)
                parts[2] = distributed.scale_grad(loss, world)
        if self.teacher is not None:
            if inputs is None:
                raise ValueError("distillation needs the model inputs")
            parts[3] = self.distill(logits, self.teacher(inputs).float())
        components = torch.stack(parts)
        total = (weights.to(components.dtype) * components).sum()
        return LossResult(total, components.detach())

    def distill(self, student: Tensor, teacher: Tensor) -> Tensor:
        """KL on temperature-softened softmax (x T^2, Hinton et al.); BCE on the teacher's sigmoid if
        multi-label."""
        t = self.temperature
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t))
        log_p = F.log_softmax(student / t, dim=1)
        log_q = F.log_softmax(teacher / t, dim=1)
        return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * (t * t)


__all__ = [
    "LossResult",
    "MultiLabelPairMiner",
    "MultiLabelTripletMiner",
    "MultiLoss",
    "Teacher",
    "class_weights",
    "multilabel_masks",
]
