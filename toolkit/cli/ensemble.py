"""``clsctl ensemble``: vote runs and prediction files into an ensemble run, weights chosen on OOF."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.options import CalibrationOpt, DecideOpt, RunsOpt, calibration_method


def ensemble(
    members: Annotated[list[str], typer.Argument(
        help="Runs (folders, ids, name suffixes, globs like 'runs/*-ce') and prediction files (.parquet "
        "probabilities, .csv submissions); with --compose, PART=RUN pairs.", metavar="RUN_OR_FILE...", show_default=False)],
    vote: Annotated[str, typer.Option("--vote", help="soft (weighted mean probability), hard (weighted majority; "
                                      "ties by mean probability) or rank (mean of per-class ranks).")] = "soft",
    weights: Annotated[str | None, typer.Option(
        "--weights", metavar="W1,W2,…|fit", help="One weight per member in argument order, or `fit` "
        "(coordinate ascent on the out-of-fold metric) [default: equal].", show_default=False)] = None,
    select: Annotated[str | None, typer.Option(
        "--select", metavar="greedy", help="Caruana forward selection with replacement on the out-of-fold "
        "rows; the selection counts become the weights.", show_default=False)] = None,
    metric: Annotated[str, typer.Option("--metric", help="What --weights fit and --select maximize: macro_f1 "
                                        "or accuracy.")] = "macro_f1",
    predictions: Annotated[str | None, typer.Option(
        "--predictions", metavar="NAME", help="The runs' prediction set to ensemble (predictions/NAME.parquet) "
        "[default: the newest set every run has].", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Name of the ensemble run.",
                                             show_default=False)] = None,
    bags: Annotated[int, typer.Option("--bags", help="Greedy selection on this many random halves of the members, "
                                      "counts averaged (resists overfitting the OOF rows).")] = 1,
    sample_submission: Annotated[Path | None, typer.Option(
        "--sample-submission", metavar="CSV", help="Copy this file's ids, order and columns in the submission.",
        show_default=False)] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Rescale each run member (each part with --compose) by its run's calibration, fitted "
        "on its out-of-fold rows, before voting.")] = False,
    calibration: CalibrationOpt = None,
    decide: DecideOpt = "argmax",
    compose: Annotated[bool, typer.Option(
        "--compose", help="The arguments are PART=RUN pairs (mask=RUN_A gender=RUN_B age=RUN_C): per-attribute "
        "runs composed into the combined label of the recipe's [targets.combine] (product of the parts).")] = False,
    into: Annotated[str | None, typer.Option(
        "--into", metavar="NAME", help="With --compose: the [targets.combine] label to build [default: the one "
        "over exactly the given parts].", show_default=False)] = None,
    runs: RunsOpt = None,
) -> None:
    """Ensemble runs and prediction files (soft, hard or rank voting), choosing weights on out-of-fold rows.

    Example: clsctl ensemble 'runs/*-ce' 'runs/*-focal' runs/20260101-120000-wce --select greedy --bags 20

    Also: clsctl ensemble RUN --calibrate --decide f1; clsctl ensemble --compose mask=RUN_A gender=RUN_B age=RUN_C --into label18
    """
    from toolkit.ensemble import ensemble as run_ensemble

    result = run_ensemble(members, vote=vote, weights=weights, select=select, metric=metric,
                          predictions=predictions, name=name, bags=bags, runs_root=runs,
                          sample_submission=sample_submission, calibrate=calibration_method(calibrate, calibration),
                          decide=decide, compose=compose, into=into)
    _print(result)


def _print(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, markup=False, width=None if Console().is_terminal else 160)
    metric = result.metric
    table = Table("member", "source", f"OOF {metric}", "accuracy", "weight", box=None)
    for m, w in zip(result.members, result.weights, strict=True):
        s = (result.member_scores or {}).get(m.name)
        table.add_row(m.name, m.source, f"{s[metric]:.4f}" if s else "-", f"{s['accuracy']:.4f}" if s else "-",
                      f"{w:.3f}")
    console.print(table)
    if result.selection:
        names = [m.name for m in result.members]
        for b, bag in enumerate(result.selection):
            prefix = f"bag {b + 1}: " if len(result.selection) > 1 else ""
            steps = " → ".join(f"{names[p['member']]} ({p['score']:.4f})" for p in bag["path"])
            console.print(f"{prefix}greedy path: {steps}")
    if result.per_class is not None:
        pc = result.per_class
        table = Table("class", *pc["members"].keys(), "→ vote", "best member", box=None, title="OOF recall per class",
                      title_justify="left")
        for c in pc["classes"]:
            table.add_row(c, *(f"{pc['members'][n][c]:.4f}" for n in pc["members"]), f"{pc['ensemble'][c]:.4f}",
                          pc["best"][c])
        console.print(table)
    if result.oof_metrics is not None:
        best = max(s[metric] for s in result.member_scores.values())
        line = (f"ensemble ({result.vote} vote, weights {result.method}): OOF {metric} {result.oof_score:.4f} "
                f"(best member {best:.4f}), accuracy {result.oof_metrics['accuracy']:.4f}")
        if result.crossfit_score is not None:
            line += f"; cross-fitted {metric} {result.crossfit_score:.4f} (weights chosen without the scored fold)"
        console.print(line)
    if result.composed is not None:
        parts = ", ".join(f"{p['part']}={p['run']} (OOF macro_f1 {p['oof']['macro_f1']:.4f})"
                          for p in result.composed["parts"])
        console.print(f"composed {result.composed['into']} ({len(result.classes)} classes) from {parts}")
    if result.calibration is not None:
        console.print(f"calibrated ({result.calibration['method']}): {result.calibration['where']}")
        for member, c in (result.calibration.get("members") or {}).items():
            if c is not None:
                param = f"T={c['temperature']:.3f}" if "temperature" in c else "per-class scales and biases"
                console.print(f"  {member} ({param}): out-of-fold NLL {c['before']['nll']:.4f} → {c['after']['nll']:.4f}, "
                              f"ECE {c['before']['ece']:.4f} → {c['after']['ece']:.4f} (after: cross-fitted by fold)")
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"decision: {result.decision_rule}")
    if result.run is not None:
        console.print(f"run: {result.run.path}")
    for kind, path in result.files.items():
        if kind in ("parquet", "csv"):
            console.print(f"{kind}: {path}")
