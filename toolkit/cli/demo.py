"""``clsctl demo``: the whole pipeline on a built-in real dataset, offline, with a report at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Output folder: new, empty, or an earlier "
                                      "demo's (whose own files are replaced; nothing else in it is touched).")] =
    Path("clsctl-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="The same steps on 500 images and 3 folds "
                                        "(seconds, not minutes).")] = False,
    open_: Annotated[bool, typer.Option("--open", help="Open the report in a web browser at the end.")] = False,
) -> None:
    """Run every stage on scikit-learn's handwritten digits: eda, split, train two recipes, predict with TTA,
    ensemble, clean, report. Offline, on a CPU, in about three minutes.

    Example: clsctl demo --out clsctl-demo --open
    """
    from toolkit.cli.progress import progress_display
    from toolkit.demo import run_demo

    with progress_display() as progress:
        result = run_demo(out, quick=quick, progress=progress)
    typer.echo(f"done in {result.seconds:.0f} s; runs in {result.out / 'runs'}")
    typer.echo(f"report: {result.report}")
    if open_:
        import webbrowser

        webbrowser.open(result.report.resolve().as_uri())
