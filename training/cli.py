"""``msir-train``: train a model from a layered YAML config.

    msir-train --config configs/cnn/mscfnet4_cifar10.yaml --data-root ~/.cache/msir/datasets/cifar10 \
        --set optim.lr0=5e-4 --epochs 2 --limit-train 5000
    torchrun --nproc-per-node 4 $(which msir-train) --config ...   # DDP on 4 GPUs (README "Scaling out")

A refusal is one line on stderr (the traceback only with --verbose or MSIR_LOG_LEVEL=debug), with the exit code of
its class (``msir_core.exit_codes.ExitCode``): 2 configuration or options, 4 checkpoint or run state to resume from,
6 dataset, 7 the training diverged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from models import CheckpointError
from msir_core.exit_codes import ExitCode, refuse
from training.config import ConfigError, load_config

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)
console = Console(stderr=True)


def _fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


@app.command()
def main(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config (may `extends:` others)."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Dataset root (overrides data.root)."),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Run name, shown in the progress bar and recorded in run.json and the checkpoints "
        "(default <model>_<data folder>, e.g. mscfnet4_my_images).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
    set_: list[str] = typer.Option([], "--set", help="Override, e.g. --set optim.lr0=1e-3 (repeatable)."),
    epochs: float | None = typer.Option(None, "--epochs", help="Total epochs (phases are rescaled to fit)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue a run found in --out."),
    limit_train: int | None = typer.Option(None, "--limit-train", help="Train on a subset of N images."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Train, evaluate every epoch, keep the best checkpoint, and print a summary."""
    # Under torchrun only rank 0 reports progress; the other ranks log warnings and errors.
    quiet = os.environ.get("RANK", "0") != "0"
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    overrides = list(set_)
    if name is not None:
        overrides.append(f"name={json.dumps(name)}")  # quoted: a name such as 2024 or yes stays a string
    if data_root is not None:
        overrides.append(f"data.root={data_root.expanduser()}")
    if out is not None:
        overrides.append(f"output_dir={out.expanduser()}")
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    if device is not None:
        overrides.append(f"runtime.device={device}")
    if limit_train is not None:
        overrides.append(f"data.limit_train={limit_train}")
    # Imported here so that `msir-train --help` stays fast.
    from msir_data import DatasetError
    from training.loop import TrainingDivergedError
    from training.state import ResumeError
    from training.trainer import train

    try:
        cfg, raw = load_config(config, overrides)
        result = train(cfg, raw, resume=resume)
    except ConfigError as exc:
        refuse("msir-train", f"{config}: {exc}", ExitCode.USAGE, exc, verbose=verbose)
    except DatasetError as exc:
        refuse("msir-train", f"dataset: {exc}", ExitCode.DATA, exc, verbose=verbose)
    except (ResumeError, CheckpointError) as exc:
        fix = "; --no-resume starts the run afresh" if isinstance(exc, ResumeError) else ""
        refuse("msir-train", f"{exc}{fix}", ExitCode.CHECKPOINT, exc, verbose=verbose)
    except TrainingDivergedError as exc:
        refuse("msir-train", f"training diverged: {exc}", ExitCode.DIVERGED, exc, verbose=verbose)
    except ValueError as exc:
        refuse("msir-train", str(exc), ExitCode.USAGE, exc, verbose=verbose)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        refuse("msir-train", f"{where}{exc.strerror or exc}", ExitCode.DATA, exc, verbose=verbose)

    if quiet:
        return
    m = result.metrics
    table = Table(title=f"msir-train: {cfg.name}", show_header=False)
    table.add_row("run directory", str(result.output_dir))
    table.add_row("best checkpoint", str(result.best_checkpoint))
    best = m.get("best", {})
    table.add_row(f"best val {best.get('metric', '')}", f"{_fmt(best.get('value'))} (epoch {best.get('epoch')})")
    for key, value in (m.get("test") or {}).items():
        if key in ("accuracy", "subset_accuracy", "f1_macro", "micro_f1", "map_at_all"):
            table.add_row(f"test {key} (best)", _fmt(value))
    if m.get("test_last"):
        key = "accuracy" if "accuracy" in m["test_last"] else "f1_macro"
        table.add_row(f"test {key} (last)", _fmt(m["test_last"].get(key)))
    table.add_row("steps", str(result.steps))
    if result.resumed_from_step is not None:
        table.add_row("resumed from step", str(result.resumed_from_step))
    table.add_row("training time (all sessions)", f"{result.train_seconds:.1f} s")
    table.add_row("wall time (this session)", f"{m.get('wall_seconds_this_session', 0.0):.1f} s")
    Console().print(table)


__all__ = ["app"]


if __name__ == "__main__":
    app()
