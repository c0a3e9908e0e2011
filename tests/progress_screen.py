"""What a long job's progress bar shows in an 80-column terminal, snapshot after every update.

``record_progress(monkeypatch, module)`` swaps ``module.progress_bar`` for the real shared bar whose every
``update``/``advance`` also renders it, the way rich redraws it on a terminal of ``width`` columns, into plain text.
The job itself (trainer, indexer) runs its real code path; only where the bar is drawn changes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress

from msir_core.progress import progress_bar

# "... 12/40 3 step/s 0:00:01 eta 0:00:02": the count, then the ETA as h:mm:ss at the end of the line.
COUNT = re.compile(r"\b(\d+)/(\d+)\b")
ETA = re.compile(r"\beta (\d+:\d\d:\d\d)$")


def render(bar: Progress, width: int = 80) -> str:
    screen = Console(width=width, record=True, file=io.StringIO(), color_system=None, legacy_windows=False)
    screen.print(bar.get_renderable())
    return screen.export_text()


def record_progress(monkeypatch: pytest.MonkeyPatch, module: Any, width: int = 80) -> list[str]:
    shots: list[str] = []

    def recording(**kwargs: Any) -> Progress:
        kwargs.update(disable=False, console=Console(file=io.StringIO(), width=width), auto_refresh=False)
        bar = progress_bar(**kwargs)
        for name in ("update", "advance"):
            method: Callable[..., None] = getattr(bar, name)

            def redraw(*args: Any, _method: Callable[..., None] = method, **kw: Any) -> None:
                _method(*args, **kw)
                shots.append(render(bar, width))

            setattr(bar, name, redraw)
        return bar

    monkeypatch.setattr(module, "progress_bar", recording)
    return shots


def check_screen(text: str, description: str, width: int = 80) -> tuple[int, int, str]:
    """The bar line of ``text`` (the first line) shows the description, a bar, the count and the ETA within
    ``width`` columns; returns (done, total, eta)."""
    lines = text.splitlines()
    assert lines and all(len(line) <= width for line in lines), text
    head = lines[0].rstrip()
    assert head.startswith(description), text
    assert "━" in head, text  # the bar itself
    count, eta = COUNT.search(head), ETA.search(head)
    assert count is not None and eta is not None, text
    return int(count.group(1)), int(count.group(2)), eta.group(1)
