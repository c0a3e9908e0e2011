"""The shared progress bar: column set, rate unit, the stats line, and what it shows at 80 columns."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn

import training.trainer
from msir_core.progress import DESCRIPTION_WIDTH, DescriptionColumn, EtaColumn, RateColumn, compact, progress_bar
from tests.progress_screen import check_screen, record_progress, render
from tests.training.test_trainer import make_config, make_data
from training.trainer import Trainer


def test_columns_and_options() -> None:
    bar = progress_bar(unit="row", disable=True, auto_refresh=False)
    kinds = [type(c) for c in bar.columns]
    assert kinds == [DescriptionColumn, BarColumn, MofNCompleteColumn, RateColumn, TimeElapsedColumn, EtaColumn]
    assert bar.columns[3].unit == "row"
    assert bar.disable and not bar.live.auto_refresh


def test_rate_rendering() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    with progress_bar(console=console) as bar:
        task = bar.add_task("decoding", total=10)
        assert bar.columns[3].render(bar.tasks[0]).plain == "-- img/s"  # no speed measured yet
        bar.advance(task, 4)
        bar.advance(task, 6)
        assert bar.columns[3].render(bar.tasks[0]).plain[0].isdigit()  # a measured rate
    text = out.getvalue()  # a non-terminal console prints the final state on stop
    assert "decoding" in text and "10/10" in text and "img/s" in text and "eta" in text


def test_compact_rate() -> None:
    assert [compact(v) for v in (3.4, 987, 12_345, 123_456, 4_567_890, 2.5e11)] == [
        "3",
        "987",
        "12.3k",
        "123k",
        "4.6M",
        "250G",
    ]


def test_long_description_and_stats_never_hide_the_count_and_eta() -> None:
    bar = progress_bar(unit="step", disable=True, auto_refresh=False)
    stats = "epoch 12/300 loss 1.9817 acc 0.212 lr 1.00e-03 12,345 img/s " + "x" * 60
    task = bar.add_task("training " + "a_very_long_run_name_" * 4, total=123_456, stats=stats)
    for done in (10_000, 20_000, 30_000):
        bar.update(task, completed=done)
    text = render(bar)
    done, total, eta = check_screen(text, "training a_very")
    assert (done, total) == (30_000, 123_456) and eta != "-:--:--"
    head, second = text.splitlines()[:2]
    assert "…" in head[: DESCRIPTION_WIDTH + 1]  # the description is what gets cut
    assert second.startswith("  epoch 12/300 loss 1.9817") and second.rstrip().endswith("…")


def test_training_progress_at_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """The real trainer on tiny data: every redraw keeps bar, step count and ETA on screen, stats below."""
    shots = record_progress(monkeypatch, training.trainer)
    cfg, raw = make_config(tmp_path / "run", "optim.epochs=2", "runtime.progress=true", "name=my_photos_run")
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        Trainer(cfg, raw, make_data()).run()
    assert len(shots) == 12  # one redraw per step on CPU
    mid = shots[len(shots) // 2]
    done, total, eta = check_screen(mid, "training my_photos_run")
    assert (done, total) == (7, 12) and eta  # measured, not "-:--:--"
    stats = mid.splitlines()[1]
    assert stats.startswith("  epoch 2 loss ") and " acc " in stats and "img/s" in stats
    # One line per epoch summary, short enough for an 80-column log beside rich's time and level columns.
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [s.split()[1] for s in summaries] == ["1/2", "2/2"]
    assert all("\n" not in s and len(s) <= 60 and " val acc " in s for s in summaries), summaries
