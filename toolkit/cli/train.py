"""``clsctl train``: one run folder per invocation, every selected fold inside."""

from __future__ import annotations

from typing import Annotated

import typer

from toolkit.cli.options import NameOpt, RecipeOpt, RunsOpt, SetOpt


def train(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    folds: Annotated[str, typer.Option("--folds", help="Folds to train: all, one number, or a list like 0,2.")] = "all",
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
    from toolkit.config import load_recipe
    from toolkit.errors import UsageError

    if resume is not None:
        if recipe is not None or set_:
            raise UsageError("--resume continues a run with its own recipe", "drop --recipe and --set when resuming")
        from toolkit.train.trainer import resume_recipe

        resolved = resume_recipe(resume, runs)
    else:
        if recipe is None:
            raise UsageError("no recipe given", "pass --recipe R.toml (recipes/quickstart.toml is a start)")
        resolved = load_recipe(recipe, set_ or [])

    from toolkit.train.trainer import Trainer

    run = Trainer(resolved, runs_root=runs, name=name, folds=folds, resume=resume).run()
    _print_summary(run)


def _print_summary(run) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    from toolkit.store import Run

    if not isinstance(run, Run) or not run.file("summary.json").is_file():
        return
    summary = run.summary
    console = Console()
    table = Table("fold", "best epoch", summary.get("metric", "score"), "accuracy", "macro_f1", box=None)
    for k, res in summary.get("folds", {}).items():
        m = res.get("metrics", {})
        table.add_row(str(k), str(res.get("best_epoch")), _fmt(res.get("best_score")), _fmt(m.get("accuracy")),
                      _fmt(m.get("macro_f1")))
    console.print(table)
    cv = summary.get("cv", {})
    for key in dict.fromkeys((summary.get("metric"), "accuracy", "macro_f1")):
        if key in cv:
            console.print(f"CV {key}: {cv[key]['mean']:.4f} ± {cv[key]['std']:.4f}")
    console.print(f"run: {run.path}")


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"
