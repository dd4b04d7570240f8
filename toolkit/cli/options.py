"""Options shared by several commands, as ``Annotated`` aliases so each reads the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RecipeOpt = Annotated[
    Path | None,
    typer.Option("--recipe", "-r", help="Recipe TOML file (see `clsctl recipe keys`).", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one recipe key, e.g. --set train.epochs=3 (repeatable).",
                 metavar="KEY=VALUE", show_default=False),
]
RunsOpt = Annotated[
    Path | None,
    typer.Option("--runs", help="Folder that holds run folders [default: $CLSCTL_RUNS or ./runs].",
                 show_default=False),
]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", "-n", help="Run name: the run folder ends with it, so runs/*-NAME finds it.",
                 show_default=False),
]
CalibrationOpt = Annotated[
    str | None,
    typer.Option("--calibration", metavar="temperature|vector", help="What --calibrate applies (giving it implies "
                 "--calibrate) [default: temperature].", show_default=False),
]
DecideOpt = Annotated[
    str,
    typer.Option("--decide", metavar="argmax|f1", help="f1: per-class offsets on the log-probabilities tuned for "
                 "macro-F1 on the out-of-fold rows, kept only when their cross-fitted gain is positive."),
]


def calibration_method(calibrate: bool, calibration: str | None) -> str | None:
    """The calibration to apply: ``--calibration M`` alone means ``--calibrate`` with M, so it is never ignored."""
    if calibration is None:
        return "temperature" if calibrate else None
    return calibration
