"""The shared progress bar: column set, rate unit, and the options callers rely on."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from training.progress import RateColumn, progress_bar


def test_columns_and_options() -> None:
    bar = progress_bar(unit="row", disable=True, auto_refresh=False)
    kinds = [type(c) for c in bar.columns]
    assert kinds == [
        TextColumn,
        BarColumn,
        MofNCompleteColumn,
        RateColumn,
        TimeElapsedColumn,
        TextColumn,
        TimeRemainingColumn,
    ]
    assert bar.columns[3].unit == "row"
    assert bar.disable and not bar.live.auto_refresh


def test_rate_replacement_and_rendering() -> None:
    stats = TextColumn("{task.fields[stats]}")
    assert progress_bar(rate=stats).columns[3] is stats

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
