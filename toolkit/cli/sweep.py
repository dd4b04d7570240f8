"""``clsctl sweep``: an Optuna study of the recipe's ``[sweep]`` space, one train run per trial."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from toolkit.cli.options import RecipeOpt, RunsOpt, SetOpt


def sweep(
    recipe: RecipeOpt = None,
    set_: SetOpt = None,
    trials: Annotated[int | None, typer.Option("--trials", "-t", metavar="N", help="Finished trials the study stops "
                                               "at, over every worker and earlier invocation [default: sweep.trials].",
                                               show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", metavar="SECONDS", help="Start no trial after this "
                                                  "many seconds [default: sweep.timeout].", show_default=False)] = None,
    study: Annotated[str | None, typer.Option("--study", metavar="NAME", help="The study; the same name continues it "
                                              "[default: the recipe's name, else the recipe file's].",
                                              show_default=False)] = None,
    storage: Annotated[str | None, typer.Option("--storage", metavar="URL", help="postgresql://user:pass@host/db "
                                                "(or mysql://…) for workers on many machines, or a journal file path "
                                                "[default: RUNS/studies/STUDY.journal].", show_default=False)] = None,
    launch: Annotated[str | None, typer.Option("--launch", metavar="COMMAND", help="Train each trial under this "
                                               "launcher, e.g. \"accelerate launch --multi_gpu --num_processes 2\" "
                                               "(clsctl adds -m toolkit …) [default: in this process].",
                                               show_default=False)] = None,
    runs: RunsOpt = None,
) -> None:
    """Search the recipe's [sweep] space with Optuna: each trial is a train run, pruned when its first epochs
    fall behind; the same --study continues, and workers on one storage share the study.

    Example: clsctl sweep --recipe r.toml --trials 12
    Also: clsctl sweep --recipe r.toml --storage postgresql://me:secret@db-host/sweeps   (on every machine)
    Also: clsctl sweep --recipe r.toml --launch "accelerate launch --multi_gpu --num_processes 4"   (4-GPU trials)
    """
    from toolkit.cli.progress import progress_display
    from toolkit.config.loader import load_recipe
    from toolkit.errors import UsageError
    from toolkit.report.sweep import sweep as run_and_report

    if recipe is None:
        raise UsageError("no recipe given", "pass --recipe R.toml with a [sweep] section")
    loaded = load_recipe(recipe, set_ or [])
    with progress_display() as progress:
        result = run_and_report(loaded, study=study or loaded.name or recipe.stem, storage=storage, trials=trials,
                                timeout=timeout, runs_root=runs, progress=progress, launch=launch)
    _print(result)


def sweep_trial(
    spec: Annotated[str | None, typer.Argument(help="The trial's spec file, written by the worker.")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="Only say how many processes the launch started.")] = False,
) -> None:
    """One trial of `clsctl sweep --launch`, in each process the launcher starts (not for direct use).

    Example: accelerate launch --num_processes 2 -m toolkit sweep-trial SPEC.json   (what --launch runs)
    """
    from toolkit.cli.progress import progress_display
    from toolkit.errors import UsageError
    from toolkit.sweep.trial_process import probe as answer_probe
    from toolkit.sweep.trial_process import run_trial

    if probe:
        answer_probe()
        return
    if spec is None:
        raise UsageError("no trial spec given", "sweep-trial runs under `clsctl sweep --launch` only")
    with progress_display() as progress:
        run_trial(spec, progress=progress)


def _print(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = result.summary
    metric = summary["metric"]
    console = Console(highlight=False, markup=False, width=None if Console().is_terminal else 200)
    counts = summary["counts"]
    console.print(f"study {summary['study']}: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n)
                  + f"; this worker ran {len(result.ran)}")
    sign = 1 if summary["direction"] == "maximize" else -1
    rows = sorted(summary["trials"], key=lambda r: (r["value"] is None, -sign * (r["value"] or 0.0), r["number"]))
    table = Table("#", "state", metric, *summary["space"], "run", box=None, title="trials, best first",
                  title_justify="left")
    for r in rows[:15]:
        value = r["value"] if r["value"] is not None else (r.get("pruned_at") or {}).get("value")
        shown = "" if value is None else f"{value:.4f}" + ("" if r["value"] is not None else " so far")
        table.add_row(str(r["number"]), r["state"], shown, *(_v(r["params"].get(k)) for k in summary["space"]),
                      r["run"] or "")
    console.print(table)
    best = summary.get("best")
    if best is not None:
        changes = "; ".join(f"{c['key']}: {_v(c['base'])} → {_v(c['value'])}" for c in best["changes"]) or "none"
        console.print(f"best: trial {best['number']}, {metric} {best['value']:.4f} (changed: {changes})")
        if best.get("baseline"):
            base = best["baseline"]
            console.print(f"the recipe's own values (trial {base['number']}): {metric} {base['value']:.4f}; "
                          f"best trial {base['gain']:+.4f}")
    pruning = summary.get("pruning") or {}
    if pruning.get("epochs_saved"):
        console.print(f"pruning: {pruning['pruned']} trial(s) stopped early, {pruning['epochs_saved']} epoch(s) saved "
                      f"of {pruning['epochs_trained'] + pruning['epochs_saved']}")
    if summary.get("importances"):
        console.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items()))
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}")
    console.print(f"run: {result.run.path}")


def _v(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
