"""The one error hierarchy.

Library code raises these; ``toolkit.cli.main.main`` turns them into a single line
``error: <what> — <how to fix>`` on stderr and an exit code. Exit 2 is for things the
user can fix in their input (usage, recipe, data); exit 1 for failures at run time.
"""

from __future__ import annotations

from collections.abc import Iterable


class ToolkitError(Exception):
    """Base class. ``hint`` says how to fix it; ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class UsageError(ToolkitError):
    """Arguments that do not fit together or name something that does not exist."""

    exit_code = 2


class RecipeError(ToolkitError):
    """A recipe that cannot be loaded: unknown key, wrong type, bad value, missing file."""

    exit_code = 2


class DataError(ToolkitError):
    """Data that cannot be used as asked: missing columns, bad paths, empty classes."""

    exit_code = 2


class ImageError(DataError):
    """One image file that cannot be decoded. ``path`` names it."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        if reason is None:
            # Re-raised from a DataLoader worker, torch passes one message that embeds the worker's
            # traceback; keep only this error's own line so the user still gets one clear line.
            own = [line for line in str(path).splitlines() if line.startswith(("toolkit.errors.ImageError: ", "ImageError: "))]
            text = own[-1].split(": ", 1)[1] if own else str(path).strip().splitlines()[-1]
            super().__init__(text)
            self.path, self.reason = "", text
            return
        super().__init__(f"cannot read image {path}: {reason}",
                         "remove or replace the file, or run `clsctl eda` to list every unreadable file")
        self.path = path
        self.reason = reason


class RunError(ToolkitError):
    """A run folder that is missing, incomplete or of the wrong kind."""

    exit_code = 2


class TrainingError(ToolkitError):
    """Training cannot go on (non-finite loss, no usable device, ...)."""

    exit_code = 1


SHOWN = 10


def examples(items: Iterable[object], limit: int = SHOWN) -> str:
    """``a, b, c … and 7 more``: the first ``limit`` items of a list an error message names, and a count."""
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    more = len(items) - limit
    return shown + (f" … and {more} more" if more > 0 else "")


def is_missing(value: object) -> bool:
    """Whether a table cell holds no value: None, NaN, pandas' NA or NaT (never the text ``"NA"``)."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    kind = type(value).__name__
    if kind in ("NAType", "NaTType"):
        return True
    try:
        return bool(value != value)  # numpy floating NaN
    except (TypeError, ValueError):
        return False
