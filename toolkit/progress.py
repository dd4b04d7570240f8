"""Progress reporting: the small interface long-running library code reports through.

Library code (training, prediction, eda) opens tasks and logs lines through a
:class:`Progress`; it never draws anything itself. The CLI owns the one display (bars on a terminal,
see ``toolkit.cli.progress``); library callers get :class:`PlainProgress`, one line at a time, or
:class:`NullProgress`, nothing at all. Nothing heavy is imported here.
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO, runtime_checkable


@runtime_checkable
class Task(Protocol):
    """One thing being counted: epochs of a fold, batches of an epoch, images of a pass."""

    def advance(self, n: int = 1, info: str = "") -> None:
        """Count ``n`` more steps done; ``info`` is a short status such as ``loss 0.41 120 img/s``."""

    def close(self) -> None:
        """The task is over (finished or abandoned); a display removes it."""


@runtime_checkable
class Progress(Protocol):
    """Where library code reports what it is doing."""

    def task(self, description: str, total: int | None, *, every: int = 0) -> Task:
        """Open a task of ``total`` steps (None when unknown).

        Args:
            description: What is counted, e.g. ``fold 0 epoch 2/10``.
            total: Steps the task will take, or None.
            every: A display that prints lines instead of drawing bars reports the task every
                ``every`` steps; 0 never does (a bar-only task, such as the folds of a run).
        """
        ...

    def log(self, line: str) -> None:
        """Show one finished line (an epoch's metrics, a warning) above any bars."""


class _PlainTask:
    def __init__(self, out: PlainProgress, description: str, total: int | None, every: int) -> None:
        self.out, self.description, self.total, self.every, self.done = out, description, total, every, 0

    def advance(self, n: int = 1, info: str = "") -> None:
        before = self.done
        self.done += n
        # A line each time the count passes a multiple of `every` (advancing by n > 1 may jump over one).
        if self.every > 0 and self.done // self.every > before // self.every:
            total = f"/{self.total}" if self.total is not None else ""
            self.out.log(f"{self.description} step {self.done}{total}" + (f" {info}" if info else ""))

    def close(self) -> None:
        pass


class PlainProgress:
    """Progress as plain lines: every log line, and a task's count every ``every`` steps.

    What a log file (``nohup``, a job scheduler) or a notebook wants: no cursor movement, one
    flushed line at a time.

    Args:
        stream: Where lines go (default: ``sys.stdout`` at the time of each line).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def task(self, description: str, total: int | None, *, every: int = 0) -> Task:
        return _PlainTask(self, description, total, every)

    def log(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)


class _NullTask:
    def advance(self, n: int = 1, info: str = "") -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """Progress that shows nothing (other processes of a distributed run, quiet library calls)."""

    def task(self, description: str, total: int | None, *, every: int = 0) -> Task:
        return _NullTask()

    def log(self, line: str) -> None:
        pass


def as_progress(value: Progress | bool | None) -> Progress:
    """A library call's ``progress`` argument as a :class:`Progress`, one rule for every call: a display as
    given, ``None`` or ``True`` for plain lines, ``False`` for nothing at all."""
    if value is False:
        return NullProgress()
    if value is None or value is True:
        return PlainProgress()
    return value
