"""``clsctl train``: one run folder per invocation, every selected fold inside."""

from __future__ import annotations

from typing import Annotated

import typer

from toolkit.cli.options import NameOpt, RecipeOpt, RunsOpt, SetOpt


def train(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    # None, not "all": --resume must tell an omitted --folds (the run's own folds) from an explicit --folds all.
    folds: Annotated[str | None, typer.Option(
        "--folds", help="Folds to train: all, one number, or a list like 0,2 [default: all; with --resume the "
        "run's own folds, and a list that includes them adds folds].", show_default=False)] = None,
    name: NameOpt = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue an interrupted or failed run "
                                                "(folder, id or name) from its last completed epoch.",
                                                show_default=False)] = None,
    runs: RunsOpt = None,
) -> None:
    """Train a recipe: k-fold with out-of-fold predictions, checkpoints and resume.

    Example: clsctl train --recipe recipes/quickstart.toml --set train.epochs=3 --folds 0
    Also: accelerate launch -m toolkit train --recipe recipes/convnext_ls.toml
    """
    from toolkit.cli.progress import progress_display
    from toolkit.train.api import run_training

    with progress_display() as progress:
        run = run_training(recipe, set_ or [], folds=folds, name=name, resume=resume, runs_root=runs,
                           progress=progress)
    from accelerate import PartialState

    if PartialState().is_main_process:  # under `accelerate launch` every process gets here; one reports
        _print_summary(run)


def _print_summary(run) -> None:  # noqa: ANN001 - toolkit.store.Run
    from rich.console import Console
    from rich.table import Table

    summary = run.summary
    if not summary:
        return
    metric = summary.get("metric", "score")
    console = Console()
    # The selection metric has its own column; accuracy and macro-F1 follow unless one of them is it.
    others = [m for m in ("accuracy", "macro_f1") if m != metric]
    table = Table("fold", "best epoch", metric, *others, box=None)
    for k, res in summary.get("folds", {}).items():
        m = res.get("metrics", {})
        table.add_row(str(k), str(res.get("best_epoch")), _fmt(res.get("best_score")), *(_fmt(m.get(o)) for o in others))
    console.print(table)
    cv = summary.get("cv", {})
    for key in dict.fromkeys((metric, *others)):
        if key in cv:
            console.print(f"CV {key}: {cv[key]['mean']:.4f} ± {cv[key]['std']:.4f}")
    console.print(f"run: {run.path}")


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"
