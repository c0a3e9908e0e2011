"""A training run from a :class:`RunConfig`: build, resume, train by epochs, evaluate, checkpoint, record.

The run directory holds ``config.yaml`` (merged), ``run.json`` (environment, git SHA, data summary, times),
``history.csv``, ``metrics.json``, ``best.*`` / ``last.*`` checkpoints and ``training_state.*`` (resume).
Running again into the same directory continues at the exact step: same schedule (checked by digest), same
data order (a function of seed and epoch), same RNG states and optimizer state.

Under ``torchrun`` (:mod:`training.distributed`) the model is wrapped in ``DistributedDataParallel``, each rank
trains on its slice of every global batch, rank 0 alone writes files and shows progress, and validation and test
run once, on rank 0, while the other ranks wait.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models import build, load_checkpoint, save_checkpoint
from msir_core.progress import progress_bar
from training import distributed
from training.augment import BatchAugment
from training.batches import BatchSource
from training.config import RunConfig, dump_config
from training.device import resolve_device
from training.evaluation.per_epoch import default_best_metric, evaluate, headline
from training.loop import Accumulator, Loop, StepContext
from training.losses import MultiLoss
from training.optimizer import build_optimizer
from training.prepared_data import PreparedData, prepare_data
from training.runinfo import environment, epoch_summary, now, read_json, write_history, write_json
from training.schedule import Schedule, build_schedule
from training.seeding import seed_everything
from training.state import ResumeError, rank_rng, read_state, restore_state, save_state

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, Any]
    steps: int
    resumed_from_step: int | None
    train_seconds: float  # time in training steps over every session of the run (evaluation excluded)


class Trainer:
    """One run. ``after_step(step)`` (optional) is called after every completed step (hooks, tests)."""

    def __init__(
        self,
        cfg: RunConfig,
        raw_config: dict[str, Any] | None = None,
        data: PreparedData | None = None,
        *,
        resume: bool = True,
        after_step: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.raw_config = raw_config if raw_config is not None else cfg.model_dump(mode="json")
        self.resume = resume
        self.hook = after_step
        self.dist, self.device, self._owns_group = distributed.setup(resolve_device(cfg.runtime.device))
        rank, world = self.dist.rank, self.dist.world_size
        self.is_main = self.dist.is_main
        self.out = Path(cfg.output_dir or Path("runs") / (cfg.name or "run")).expanduser()
        if cfg.runtime.num_threads is not None:
            torch.set_num_threads(cfg.runtime.num_threads)
        seed_everything(cfg.seed, cfg.runtime.deterministic)
        if data is None:
            # The first rank of every node decodes into the node's cache; the node's other ranks then read it.
            first_on_node = self.dist.local_rank == 0
            if not first_on_node:
                distributed.barrier()
            data = prepare_data(cfg, progress=cfg.runtime.progress and self.is_main)
            if first_on_node:
                distributed.barrier()
        self.data = data
        d = self.data
        self.model = build(
            cfg.model.name,
            num_classes=len(d.class_names),
            in_channels=d.spec.channels,
            image_size=d.spec.image_size,
            **cfg.model.options,
        ).to(self.device)
        cuda = self.device.type == "cuda"
        self.cpu_bf16 = cfg.runtime.cpu_bf16 and self.device.type == "cpu"
        if self.cpu_bf16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            logger.warning("runtime.cpu_bf16: this CPU has no native bf16 (emulated bf16 is slower); training in fp32")
            self.cpu_bf16 = False
        # channels_last also pays on a CPU under bf16 (oneDNN's blocked kernels): 661 vs 547 img/s here.
        self.channels_last = (cuda or self.cpu_bf16) and cfg.runtime.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.runtime.sync_batch_norm and world > 1:
            if not cuda:
                raise ValueError("runtime.sync_batch_norm needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # What DDP wraps (self.model stays the plain module: checkpoints, evaluation, resume).
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if cuda else None, broadcast_buffers=True
            )
            if rank:  # dropout differs between ranks as it would between the samples of one process
                torch.manual_seed(cfg.seed + 1_000_003 * rank)
        self.source = BatchSource(
            d.images,
            d.labels,
            d.train_rows,
            self.device,
            batch_size=cfg.optim.batch_size,
            gpu_fraction=cfg.runtime.gpu_data_fraction,
            rank=rank,
            world_size=world,
        )
        s = cfg.schedule
        self.schedule: Schedule = build_schedule(
            cfg.phase_list(),
            self.source.steps_per_epoch,
            lr0=cfg.optim.lr0,
            kind=s.kind,
            warmup_epochs=cfg.warmup_epochs,
            min_lr_fraction=s.min_lr_fraction,
            onecycle_div=s.onecycle_div,
            onecycle_final_div=s.onecycle_final_div,
        )
        self.loss_fn = MultiLoss(
            cfg.loss,
            multi_label=d.multi_label,
            active=self.schedule.active,
            num_classes=len(d.class_names),
            spec=d.spec,
            class_counts=None
            if d.multi_label
            else np.bincount(d.labels[d.train_rows], minlength=len(d.class_names)).tolist(),
        ).to(self.device)
        self.optimizer = build_optimizer(cfg.optim, [p for p in self.model.parameters() if p.requires_grad])
        # Rank 0 keeps the one-process stream; other ranks draw their own augmentations.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1_000_003 * rank)
        self.augment = BatchAugment(cfg.augment, self.generator)
        self.best_metric = cfg.eval.best_metric or default_best_metric(d.multi_label)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"value": None, "epoch": None}
        self.start_step = 0
        self.pending_acc: dict[str, Any] | None = None
        self.resumed_from: int | None = None

    # -- resume ---------------------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What must match for a state to be resumed into this run."""
        ident = {
            "schedule_digest": self.schedule.digest(),
            "total_steps": self.schedule.total_steps,
            "steps_per_epoch": self.schedule.steps_per_epoch,
            "data_fingerprint": self.data.fingerprint(),
            "model": self.model.build_config,  # type: ignore[attr-defined]
            "seed": self.cfg.seed,
            "batch_size": self.source.batch_size,
        }
        if self.dist.world_size > 1:  # every rank resumes its own random stream: the same world size is needed
            ident["world_size"] = self.dist.world_size
        return ident

    def _read_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """Rank 0 reads the state and sends it to the other ranks (their nodes need not share the run folder)."""
        if self.dist.world_size == 1:
            return read_state(self.out)
        found: Any = None
        if self.is_main:
            try:
                found = read_state(self.out)
            except ResumeError as error:
                found = error
        found = distributed.broadcast_object(found)
        if isinstance(found, ResumeError):
            raise found
        return found

    def _try_resume(self) -> None:
        found = self._read_state()
        if found is None:
            return
        if not self.resume:
            logger.warning("%s: starting over (--no-resume); the old training state will be replaced", self.out)
            return
        tensors, info = found
        mine = self.identity()
        diffs = [
            f"{k}: saved {info.get(k)!r}, now {v!r}" for k, v in mine.items() if _jsonish(info.get(k)) != _jsonish(v)
        ]
        if diffs:  # every rank computes the same verdict from the same state, so they all stop
            raise ResumeError(
                f"{self.out}/training_state.safetensors was written by a different run setup and cannot be "
                f"resumed: {'; '.join(diffs)}. Use another --out, or --no-resume to start over."
            )
        restore_state(tensors, info, self.model, self.optimizer, self.generator, rank=self.dist.rank)
        self.start_step = int(info["step"])
        self.history = list(info.get("history", []))
        self.best = dict(info.get("best", self.best))
        self.pending_acc = info.get("accumulator")
        self.resumed_from = self.start_step
        if self.is_main:
            logger.info("resuming %s at step %s / %s", self.out, self.start_step, self.schedule.total_steps)

    def _save_state(self, step: int, acc: Accumulator | None) -> None:
        if acc is not None and step % self.schedule.steps_per_epoch:
            acc = acc.reduced()  # a collective: every rank is here
        info = {
            **self.identity(),
            "step": step,
            "epoch": step / self.schedule.steps_per_epoch,
            "history": self.history,
            "best": self.best,
            "accumulator": acc.to_json() if acc is not None and step % self.schedule.steps_per_epoch else None,
            "saved_at": now(),
        }
        ranks = distributed.gather_objects(rank_rng(self.generator)) if self.dist.world_size > 1 else None
        if self.is_main:
            save_state(self.out, self.model, self.optimizer, self.generator, info, ranks)

    # -- checkpoints and evaluation --------------------------------------------------------------------------
    def _checkpoint(self, name: str, epoch: int, step: int, metrics: dict[str, Any]) -> Path:
        d = self.data
        return save_checkpoint(
            self.out / name,
            self.model,
            class_names=d.class_names,
            class_descriptions=d.class_descriptions,
            preprocess=d.spec,
            multi_label=d.multi_label,
            training={
                "name": self.cfg.name,
                "epoch": epoch,
                "step": step,
                "seed": self.cfg.seed,
                "schedule_digest": self.schedule.digest(),
                "optimizer": self.cfg.optim.optimizer,
                "dataset": d.summary,
                "git_sha": self.env.get("git_sha"),
            },
            metrics=metrics,
        )

    def _evaluate(self, model: nn.Module, split: str, retrieval: bool) -> dict[str, Any]:
        d, e = self.data, self.cfg.eval
        target = d.val if split == "val" else d.test
        assert target is not None
        return evaluate(
            model,
            target,
            d.spec,
            class_names=d.class_names,
            multi_label=d.multi_label,
            device=self.device,
            batch_size=e.batch_size,
            retrieval_max=e.retrieval_max if retrieval else 0,
        )

    # -- the run ---------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            if self._owns_group:
                distributed.teardown()

    def _run(self) -> TrainResult:
        cfg, sched = self.cfg, self.schedule
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._try_resume()
        self.env = environment(self.device)
        if self.is_main:
            dump_config(self.raw_config, self.out / "config.yaml")
        run_json = read_json(self.out / "run.json") if self.resumed_from is not None and self.is_main else {}
        sessions = [*run_json.get("sessions", []), {"started_at": now(), "start_step": self.start_step}]
        run_json.update(
            {
                "name": cfg.name,
                "output_dir": str(self.out),
                "started_at": run_json.get("started_at", now()),
                "ended_at": None,
                **self.env,
                "dataset": self.data.summary,
                "placement": self.source.placement,
                "world_size": self.dist.world_size,
                "backend": self.dist.backend,
                "global_batch": self.source.batch_size,
                "per_rank_batch": self.source.local_batch,
                "steps_per_epoch": sched.steps_per_epoch,
                "total_steps": sched.total_steps,
                "schedule_digest": sched.digest(),
                "sessions": sessions,
            }
        )
        if self.is_main:
            write_json(self.out / "run.json", run_json)
        model = torch.compile(self.train_model) if cfg.runtime.compile else self.train_model
        ctx = StepContext(
            model=model,
            optimizer=self.optimizer,
            loss_fn=self.loss_fn,
            augment=self.augment,
            schedule=sched,
            source=self.source,
            spec=self.data.spec,
            device=self.device,
            seed=cfg.seed,
            multi_label=self.data.multi_label,
            amp=cfg.runtime.amp,
            cpu_bf16=self.cpu_bf16,
            channels_last=self.channels_last,
            grad_clip=cfg.optim.grad_clip,
            sync_every=cfg.runtime.log_every if self.device.type == "cuda" else 1,
        )
        loop = Loop(ctx)
        spe, total = sched.steps_per_epoch, sched.total_steps
        n_epochs = math.ceil(total / spe)
        t_start = time.perf_counter()
        acc_holder: dict[str, Accumulator] = {}

        def after_step(step: int) -> None:
            done = step + 1
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done % spe and done < total:
                loop.check_finite()  # never save a diverged state
                self._save_state(done, acc_holder.get("acc"))
            if self.hook is not None:
                self.hook(step)

        # Loss/accuracy/LR/throughput (the loop's ``stats`` field) go on a second line under the bar (rank 0 only).
        with progress_bar(unit="step", disable=not (cfg.runtime.progress and self.is_main)) as bar:
            task = bar.add_task(f"training {cfg.name or ''}".strip(), total=total, completed=self.start_step, stats="")
            for epoch in range(self.start_step // spe, n_epochs):
                start, end = max(self.start_step, epoch * spe), min((epoch + 1) * spe, total)
                if start >= end:
                    continue
                acc = Accumulator(self.device)
                if self.pending_acc and start % spe:
                    acc.load(self.pending_acc, counts=self.is_main)
                self.pending_acc = None
                acc_holder["acc"] = acc
                t0 = time.perf_counter()
                loop.run_epoch(epoch, start, end, acc, after_step=after_step, progress=bar, task=task)
                self._end_epoch(epoch, end, acc, time.perf_counter() - t0, loop.images_per_second)
        metrics = self._finish(time.perf_counter() - t_start) if self.is_main else {}
        metrics = distributed.broadcast_object(metrics)
        if self.is_main:
            run_json["ended_at"] = now()
            run_json["sessions"][-1]["ended_at"] = run_json["ended_at"]
            write_json(self.out / "run.json", run_json)
        return TrainResult(
            self.out,
            self.out / "best.safetensors",
            self.out / "last.safetensors",
            metrics,
            total,
            self.resumed_from,
            metrics["train_seconds"],
        )

    def _end_epoch(self, epoch: int, step: int, acc: Accumulator, seconds: float, ips: float) -> None:
        cfg, sched = self.cfg, self.schedule
        acc = acc.reduced()  # the whole global batch (a collective: every rank is here)
        ips *= self.dist.world_size  # ranks run in lockstep: the job's rate
        if not self.is_main:
            self._save_state(step, None)  # joins rank 0's gathering of the random states
            return
        last = step >= sched.total_steps
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": sched.lr[step - 1].item(),
            **acc.summary(),
            "images_per_s": ips,
            "seconds": seconds,
        }
        val: dict[str, Any] = {}
        if self.data.val is not None and ((epoch + 1) % cfg.eval.every == 0 or last):
            retrieval = bool(cfg.eval.retrieval_every) and ((epoch + 1) % cfg.eval.retrieval_every == 0 or last)
            val = headline(self._evaluate(self.model, "val", retrieval))
            row.update({f"val_{k}": v for k, v in val.items()})
        self.history.append(row)
        write_history(self.out / "history.csv", self.history)
        metrics = {"epoch": epoch + 1, "train": acc.summary(), "val": val}
        self._checkpoint("last", epoch + 1, step, metrics)
        value = val.get(self.best_metric) if val else None
        if val and self.best_metric not in val:
            raise ValueError(f"eval.best_metric {self.best_metric!r} is not one of {sorted(val)}")
        if self.data.val is None or (value is not None and (self.best["value"] is None or value > self.best["value"])):
            self.best = {"value": value, "epoch": epoch + 1, "metric": self.best_metric}
            self._checkpoint("best", epoch + 1, step, metrics)
        self._save_state(step, None)
        logger.info("%s", epoch_summary(row, math.ceil(sched.total_steps / sched.steps_per_epoch), self.best_metric))

    def _finish(self, wall_seconds: float) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "best": self.best,
            "epochs": self.history[-1]["epoch"] if self.history else 0,
            "steps": self.schedule.total_steps,
            "train_seconds": sum(float(r["seconds"]) for r in self.history),
            "wall_seconds_this_session": wall_seconds,
            "final_epoch": self.history[-1] if self.history else None,
        }
        if self.data.test is not None:
            best = load_checkpoint(self.out / "best", device=self.device).model
            retrieval = bool(self.cfg.eval.retrieval_every)
            test = self._evaluate(best, "test", retrieval)
            metrics["test"] = headline(test)
            metrics["test_full"] = test
            last_epoch = self.history[-1]["epoch"] if self.history else None
            if self.best.get("epoch") == last_epoch:  # same weights: no second pass over the test set
                metrics["test_last"] = metrics["test"]
            else:
                metrics["test_last"] = headline(self._evaluate(self.model, "test", False))
        write_json(self.out / "metrics.json", metrics)
        return metrics


def _jsonish(v: Any) -> Any:
    """Compare values the way they round-trip through JSON (tuples become lists)."""
    return json.loads(json.dumps(v, default=str))


def train(cfg: RunConfig, raw_config: dict[str, Any] | None = None, **kwargs: Any) -> TrainResult:
    return Trainer(cfg, raw_config, **kwargs).run()


__all__ = ["TrainResult", "Trainer", "train"]
