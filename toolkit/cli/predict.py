"""``clsctl predict``: a run's fold models (with TTA) over new images → probabilities and a submission."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.options import CalibrationOpt, DecideOpt, RunsOpt, calibration_method


def predict(
    run: Annotated[str, typer.Argument(help="Train run: folder, id or name suffix.", show_default=False)],
    data: Annotated[Path, typer.Argument(help="Folder of images (an ImageFolder is also scored) or a CSV/Parquet "
                                         "manifest with a path column.", show_default=False)],
    tta: Annotated[str | None, typer.Option(
        "--tta", metavar="SPEC", help="Views besides the identity, comma-separated: hflip, vflip, scale:<f>, "
        "fivecrop, trainaug:<n>; `none`; or `auto` (pick the best policy on the run's out-of-fold rows) "
        "[default: the recipe's tta.views].", show_default=False)] = None,
    folds: Annotated[str | None, typer.Option("--folds", help="Fold models to average: all, best (by the run's "
                                              "selection score), a number, or a list like 0,2 [default: all; with "
                                              "--engine onnx, the export's].", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Name of the prediction set: "
                                             "predictions/NAME.parquet and .csv [default: data name + views].",
                                             show_default=False)] = None,
    sample_submission: Annotated[Path | None, typer.Option(
        "--sample-submission", metavar="CSV", help="Copy this file's ids, order and columns (class-probability "
        "columns, or one label column).", show_default=False)] = None,
    combine: Annotated[str | None, typer.Option(
        "--combine", help="Average views and folds as mean_prob or mean_logit [default: the recipe's tta.combine].",
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", "-b", help="Images per batch [default: twice the training batch; halved on GPU "
        "out-of-memory].", show_default=False)] = None,
    root: Annotated[Path | None, typer.Option("--root", metavar="DIR", help="Folder a manifest's paths are "
                                              "relative to [default: the manifest's folder].",
                                              show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Data-loader processes [default: on a GPU, "
                                                "all cores but one; on the CPU, none up to 4 cores, else "
                                                "one per 8].", show_default=False)] = None,
    engine: Annotated[str, typer.Option("--engine", metavar="torch|onnx", help="torch: the fold checkpoints; onnx: "
                                        "the graph `clsctl export` wrote, on onnxruntime (CPU), with the export's "
                                        "folds, views and combine.")] = "torch",
    onnx: Annotated[Path | None, typer.Option("--onnx", metavar="DIR", help="With --engine onnx: the export folder "
                                              "or .onnx file [default: RUN/export].", show_default=False)] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Rescale the probabilities by the run's calibration (fitted on its out-of-fold rows; "
        "recorded in its summary.json).")] = False,
    calibration: CalibrationOpt = None,
    decide: DecideOpt = "argmax",
    runs: RunsOpt = None,
) -> None:
    """Predict images with a run's fold models and test-time views; write probabilities and a submission.

    Example: clsctl predict runs/20260101-120000-baseline data/test --tta hflip,scale:1.15 --sample-submission data/sample_submission.csv

    Also: accelerate launch -m toolkit predict RUN data/test (shards the images over the processes)
    """
    from toolkit.cli.progress import progress_display
    from toolkit.predict import predict as run_predict

    with progress_display() as progress:
        result = run_predict(run, data, tta=tta, folds=folds, name=name, sample_submission=sample_submission,
                             combine=combine, batch_size=batch_size, runs_root=runs, root=root, workers=workers,
                             progress=progress, engine=engine, onnx=onnx,
                             calibrate=calibration_method(calibrate, calibration), decide=decide)
    if result.main:
        _print(result)


def _print(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, markup=False, width=None if Console().is_terminal else 160)
    if result.tta_auto is not None:
        auto = result.tta_auto
        table = Table(title=f"--tta auto on {auto['rows']} out-of-fold rows ({auto['metric']}, folds {auto['folds']})",
                      box=None, title_justify="left")
        table.add_column("policy")
        table.add_column(auto["metric"], justify="right")
        table.add_column("vs none", justify="right")
        none = auto["policies"][0]["score"]
        for p in auto["policies"]:
            mark = " *" if p["name"] == auto["chosen"] else ""
            table.add_row(p["name"] + mark, f"{p['score']:.4f}", f"{p['score'] - none:+.4f}")
        console.print(table)
        for view, why in auto["skipped"].items():
            console.print(f"skipped {view}: {why}")
        gains = ", ".join(f"{c} {g:+.4f}" for c, g in auto["gain_per_class"].items())
        console.print(f"chosen: {auto['chosen']} — recall gain per class vs none: {gains}")
    for note in result.notes:
        console.print(f"warning: {note}", soft_wrap=True)  # one line, whatever the path's length
    views = ", ".join(result.views)
    engine = " on onnxruntime" if result.engine == "onnx" else ""
    console.print(f"{result.n} images ({result.source}), folds {result.folds}, views [{views}], {result.combine}{engine}: "
                  f"{result.seconds:.1f}s, {result.img_s:.0f} img/s")
    if result.calibration is not None:
        for head, params in result.calibration.items():
            if head != "method":
                console.print(f"calibrated {head} ({result.calibration['method']}): out-of-fold NLL "
                              f"{params['before']['nll']:.4f} → {params['after']['nll']:.4f}, ECE "
                              f"{params['before']['ece']:.4f} → {params['after']['ece']:.4f} (cross-fitted)")
    console.print(f"decision: {result.decision_rule}" + (f" ({result.decision.note})" if result.decision else ""))
    if result.scores is not None:
        s = result.scores
        if s["n"] < result.n:
            why = {"unlabeled": "without a label", "unknown_class": "of a class the run does not know"}
            left = ", ".join(f"{n} {why.get(k, k)}" for k, n in result.unscored.items())
            console.print(f"scored {s['n']} of {result.n} images ({left})")
        console.print(f"accuracy {s['accuracy']:.4f} | macro_f1 {s['macro_f1']:.4f} | "
                      f"balanced_accuracy {s['balanced_accuracy']:.4f}")
        table = Table("class", "recall", "support", box=None)
        for c, r in s["per_class_recall"].items():
            table.add_row(c, f"{r:.4f}", str(s["support"][c]))
        console.print(table)
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}")
