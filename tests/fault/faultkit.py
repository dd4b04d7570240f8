"""Assertions the fault tests share: a refused command prints exactly one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def one_line(capsys: Any, code: int, *needles: str, exit_code: int = 2) -> str:
    """The one stderr line of a refused command (``error: <what> — <fix>``); it holds every needle."""
    err = capsys.readouterr().err.strip()
    assert code == exit_code, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and " — " in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def run_folders(folder: Path) -> list[Path]:
    """The folders under a runs folder (none when it was never created)."""
    return [p for p in folder.iterdir() if p.is_dir()] if folder.exists() else []
