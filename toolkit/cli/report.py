"""``clsctl report``: leaderboard, what changed, whether it is real; one offline HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.options import RunsOpt


def report(
    runs_args: Annotated[list[str], typer.Argument(help="Runs (folders, ids, name suffixes, globs such as "
                                                   "'runs/*') and EDA folders.", metavar="RUN...",
                                                   show_default=False)],
    baseline: Annotated[str | None, typer.Option("--baseline", "-b", metavar="RUN", help="Compare every run with "
                                                 "this one [default: each run's parent, else the best run].",
                                                 show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE.html", help="The HTML file to write.")] =
    Path("report.html"),
    metric: Annotated[str | None, typer.Option("--metric", "-m", metavar="M", help="Rank and compare by this "
                                               "metric: macro_f1, accuracy, balanced_accuracy, log_loss, val_loss "
                                               "[default: the selection metric of most runs].",
                                               show_default=False)] = None,
    top_classes: Annotated[int, typer.Option("--top-classes", "-k", metavar="K", help="Weakest classes shown per "
                                             "table (all of them go to a CSV next to the page).")] = 20,
    resamples: Annotated[int, typer.Option("--resamples", metavar="B", help="Bootstrap resamples per "
                                           "comparison.")] = 1000,
    runs: RunsOpt = None,
) -> None:
    """Compare runs: a leaderboard, the recipe keys each run changed against its baseline, and whether the gain
    is bigger than the noise (fold-paired and bootstrap 95% intervals on shared out-of-fold rows).

    Writes one HTML file that opens from disk: curves, per-class recall, confusion, top losses, calibration,
    ensemble members; EDA, split and clean runs with their headline numbers.

    Example: clsctl report runs/* --out report.html
    """
    from toolkit.cli.progress import progress_display
    from toolkit.report.experiment_html import report_runs

    with progress_display() as progress:
        result = report_runs(runs_args, out, runs_root=runs, baseline=baseline, metric=metric, top_classes=top_classes,
                             resamples=resamples, progress=progress)
    _print(result)


def _print(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from toolkit.report.experiment import format_duration

    console = Console(highlight=False, markup=False, width=None if Console().is_terminal else 200)
    m = result.metric
    board = Table("#", "run", "kind", "status", "model", "size", "loss", "epochs", "folds", f"CV {m}",
                  "CV accuracy", f"OOF {m}", "decision", "time", "vs baseline", box=None, title=f"leaderboard by {m}",
                  title_justify="left")
    for i, row in enumerate(result.leaderboard(), 1):
        cv, acc = row["cv"], row["cv_accuracy"]
        board.add_row(str(i), row["run"], row["kind"], row["status"], row["model"], row["image_size"], row["loss"],
                      row["epochs"], str(row["folds"]),
                      "" if cv is None else f"{cv[0]:.4f} ± {cv[1]:.4f}" + (" so far" if row["partial"] else ""),
                      "" if acc is None else f"{acc[0]:.4f} ± {acc[1]:.4f}",
                      "" if row["oof"] is None else f"{row['oof']:.4f}", row["decision"], format_duration(row["seconds"]),
                      row["versus"])
    console.print(board)
    changed = [c for c in result.changes.values() if c.baseline is not None]
    if changed:
        table = Table("run", "baseline", "changed", f"Δ CV {m}", "scored on", "Δ shared rows", "fold-paired 95%",
                      "bootstrap 95%", "verdict", box=None, title="what changed, and is it real", title_justify="left")
        for c in changed:
            keys = "; ".join(f"{k}: {_v(a)} → {_v(b)}" for k, a, b in c.keys) or (
                "same recipe" if c.comparable else "no recipe on one side")
            if c.flagged:
                keys = f"[{len(c.keys)} keys at once] " + keys
            s = c.significance
            table.add_row(c.run, f"{c.baseline} ({c.reason})", keys, "" if c.delta is None else f"{c.delta:+.4f}",
                          f"{s.rows} rows, {s.scored_as}" + (f" ({s.note})" if s.note else "") if s else "",
                          "" if s is None or s.delta is None else f"{s.delta:+.4f}",
                          _interval(s.folds if s else None), _interval(s.bootstrap if s else None),
                          s.verdict if s else "no shared rows")
        console.print(table)
    for e in result.entries:
        for note in e.notes:
            console.print(f"{e.id}: {note}")
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}")


def _v(value: Any) -> str:
    return "(not set)" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _interval(i: Any) -> str:
    return "n/a" if i is None else f"[{i.low:+.4f}, {i.high:+.4f}]"

