"""The CLI's one progress display: rich bars on a terminal, plain lines everywhere else.

Library code reports through :class:`toolkit.progress.Progress`; a command opens the display with
``with progress_display() as progress:`` and hands it to the library call. On a terminal every open
task is a transient bar (folds, the epochs of a fold, the batches of an epoch) and logged lines scroll
above them. When stdout is not a terminal (``nohup``, a pipe, a job scheduler) the display is
:class:`toolkit.progress.PlainProgress`, so a log file stays one readable line per event.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from toolkit.progress import PlainProgress, Progress, Task


class _RichTask:
    def __init__(self, display: RichProgress, task_id: Any) -> None:
        self.display, self.task_id, self.closed = display, task_id, False

    def advance(self, n: int = 1, info: str = "") -> None:
        if not self.closed:
            self.display.bars.update(self.task_id, advance=n, info=info)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.display.remove(self.task_id)


class RichProgress:
    """Transient rich bars, one per open task; the live display runs only while a task is open."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bars

        self.bars = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
        self.open = 0

    def task(self, description: str, total: int | None, *, every: int = 0) -> Task:
        if self.open == 0:
            self.bars.start()
        self.open += 1
        return _RichTask(self, self.bars.add_task(description, total=total, info=""))

    def remove(self, task_id: Any) -> None:
        self.bars.remove_task(task_id)
        self.open -= 1
        if self.open == 0:
            self.bars.stop()

    def log(self, line: str) -> None:
        self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        """Take every bar down (an error ends a command with tasks still open)."""
        if self.open:
            self.open = 0
            self.bars.stop()


@contextmanager
def progress_display(terminal: bool | None = None) -> Iterator[Progress]:
    """The display for one command: bars when stdout is a terminal (or ``terminal`` is true), else lines."""
    if not (sys.stdout.isatty() if terminal is None else terminal):
        yield PlainProgress()
        return
    display = RichProgress()
    try:
        yield display
    finally:
        display.stop()
