"""The rich progress bar of every long job: description, bar, done/total, rate, elapsed and ETA.

It is laid out for an 80-column terminal: the description is cut (with an ellipsis) before anything else, the bar
shrinks to what is left, and the count and the ETA always show. Per-task statistics (the trainer's loss, accuracy,
learning rate and throughput) go in a task's ``stats`` field and are printed on a second line under the bar, so a
long stats string can never push the count or the ETA off the screen.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, RenderableType
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
from rich.table import Column
from rich.text import Text

__all__ = [
    "DESCRIPTION_WIDTH",
    "DescriptionColumn",
    "EtaColumn",
    "RateColumn",
    "StatsProgress",
    "compact",
    "progress_bar",
]

# Widest description shown; longer ones (a long dataset or folder name) end in an ellipsis.
DESCRIPTION_WIDTH = 26


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``1,234 img/s``."""

    def __init__(self, unit: str = "img") -> None:
        super().__init__(table_column=Column(no_wrap=True))
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{compact(speed)} {self.unit}/s" if speed else f"-- {self.unit}/s", style="progress.data.speed")


def compact(value: float) -> str:
    """At most five characters: ``987``, ``12.3k``, ``4.6M`` (a rate must not take the ETA's place)."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}" if value < 100 * limit else f"{value / limit:.0f}{suffix}"
    return f"{value:.0f}"


class DescriptionColumn(TextColumn):
    """The task description, on one line; the one column that gives up width (ending in "…") when the line is
    too long for the terminal."""

    def __init__(self) -> None:
        # no_wrap=False on the column marks it as the one rich may narrow; the text itself never wraps.
        super().__init__(
            "[progress.description]{task.description}",
            table_column=Column(no_wrap=False, overflow="ellipsis", max_width=DESCRIPTION_WIDTH),
        )

    def render(self, task: Task) -> Text:
        text = super().render(task)
        text.no_wrap, text.overflow = True, "ellipsis"
        return text


class EtaColumn(TimeRemainingColumn):
    """``eta 0:04:50`` (``eta -:--:--`` until a rate is measured)."""

    def render(self, task: Task) -> Text:
        remaining = super().render(task)
        return Text.assemble("eta ", remaining)


class StatsProgress(Progress):
    """A :class:`Progress` that prints each task's ``stats`` field (when set) on its own line below the bars."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            stats = task.fields.get("stats")
            if stats and task.visible:
                yield Text(f"  {stats}", no_wrap=True, overflow="ellipsis", style="progress.description")


def progress_bar(
    *,
    unit: str = "img",
    transient: bool = False,
    console: Console | None = None,
    disable: bool = False,
    auto_refresh: bool = True,
) -> Progress:
    """The shared bar; a task's ``stats`` field (``add_task(..., stats="")``) is shown on a second line.

    ``auto_refresh=False`` keeps rich from starting its refresh thread, for callers that fork worker processes
    while the bar is open; they call ``refresh()`` themselves.
    """
    return StatsProgress(
        DescriptionColumn(),
        # The bar takes the width the other columns leave, never under 8 cells (the description shrinks first).
        BarColumn(bar_width=None, table_column=Column(ratio=1, width=8)),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        RateColumn(unit),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        EtaColumn(table_column=Column(no_wrap=True)),
        transient=transient,
        console=console,
        disable=disable,
        auto_refresh=auto_refresh,
        expand=True,
    )
