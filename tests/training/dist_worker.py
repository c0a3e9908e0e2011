"""A ``torchrun`` worker for tests/training/test_distributed.py: ``msir-train``'s CLI, with two test probes.

- Every file a rank writes through ``msir_core.atomic`` (checkpoints, training state, run.json, history.csv,
  metrics.json) or ``dump_config`` (config.yaml) is appended to ``$MSIR_TEST_WRITES/rank<R>.txt``.
- ``MSIR_TEST_KILL_RANK=R`` and ``MSIR_TEST_KILL_STEP=S``: once the training state of step S is saved (all ranks
  past a barrier), rank R SIGKILLs itself, once (``$MSIR_TEST_WRITES/killed`` marks it), like a crashed GPU.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import msir_core.atomic  # noqa: E402
import training.trainer  # noqa: E402
from training import distributed  # noqa: E402

LOG = Path(os.environ["MSIR_TEST_WRITES"])
RANK = os.environ.get("RANK", "0")


def record(path: Path | str) -> None:
    with (LOG / f"rank{RANK}.txt").open("a", encoding="utf-8") as fh:
        fh.write(f"{Path(path).name}\n")


def patch_writes() -> None:
    atomic_write, dump_config = msir_core.atomic.atomic_write, training.trainer.dump_config

    def recorded_atomic_write(path: Path, *args: Any, **kwargs: Any) -> Any:
        record(path)
        return atomic_write(path, *args, **kwargs)

    def recorded_dump_config(raw: dict, path: Path) -> None:
        record(path)
        dump_config(raw, path)

    msir_core.atomic.atomic_write = recorded_atomic_write  # atomic_write_text/bytes call it through the module
    training.trainer.dump_config = recorded_dump_config
    for name in ("training.state", "training.runinfo", "models.checkpoint"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "atomic_write"):
            module.atomic_write = recorded_atomic_write  # type: ignore[attr-defined]


def patch_kill() -> None:
    kill_rank, kill_step = os.environ.get("MSIR_TEST_KILL_RANK"), os.environ.get("MSIR_TEST_KILL_STEP")
    if kill_rank is None or kill_step is None:
        return
    marker = LOG / "killed"
    save_state = training.trainer.Trainer._save_state

    def save_then_maybe_die(self: training.trainer.Trainer, step: int, acc: Any) -> None:
        save_state(self, step, acc)
        if step == int(kill_step) and not marker.exists():
            distributed.barrier()  # rank 0 has finished writing the state
            if kill_rank == RANK:
                marker.write_text(f"rank {RANK} killed after step {step}\n")
                os.kill(os.getpid(), signal.SIGKILL)

    training.trainer.Trainer._save_state = save_then_maybe_die  # type: ignore[method-assign]


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    patch_writes()
    patch_kill()
    from training.cli import app

    app()
