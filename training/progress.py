"""The rich progress bar of every long job: description, bar, done/total, rate, elapsed and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["RateColumn", "progress_bar"]


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``1,234 img/s``."""

    def __init__(self, unit: str = "img") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"-- {self.unit}/s", style="progress.data.speed")


def progress_bar(
    *,
    unit: str = "img",
    rate: ProgressColumn | None = None,
    transient: bool = False,
    console: Console | None = None,
    disable: bool = False,
    auto_refresh: bool = True,
) -> Progress:
    """The shared bar; ``rate`` replaces the :class:`RateColumn` (the trainer shows its own stats there).

    ``auto_refresh=False`` keeps rich from starting its refresh thread, for callers that fork worker processes
    while the bar is open; they call ``refresh()`` themselves.
    """
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        rate if rate is not None else RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        transient=transient,
        console=console,
        disable=disable,
        auto_refresh=auto_refresh,
    )
