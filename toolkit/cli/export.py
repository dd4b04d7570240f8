"""``clsctl export``: a run's fold models as one ONNX graph (or one per fold), checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.options import RunsOpt


def export(
    run: Annotated[str, typer.Argument(help="Train run: folder, id or name suffix.", show_default=False)],
    folds: Annotated[str | None, typer.Option("--folds", help="Fold models in the graph: all, best (by the run's "
                                              "selection score), a number, or a list like 0,2 [default: all].",
                                              show_default=False)] = None,
    tta: Annotated[str | None, typer.Option("--tta", metavar="none|hflip", help="Flip views averaged inside the "
                                            "graph: none, hflip, vflip or hflip,vflip [default: the recipe's tta.views].",
                                            show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="Export folder, replaced as a whole "
                                             "[default: RUN/export].", show_default=False)] = None,
    opset: Annotated[int | None, typer.Option("--opset", metavar="N", help="ONNX opset [default: the exporter's].",
                                              show_default=False)] = None,
    per_fold: Annotated[bool, typer.Option("--per-fold", help="One graph per fold (fold<k>.onnx) instead of one "
                                           "graph that averages them (model.onnx).")] = False,
    runs: RunsOpt = None,
) -> None:
    """Export a run to ONNX: one graph that reproduces `clsctl predict`, and preprocessing.json to feed it.

    The graph takes normalized float32 NCHW images (batch size free) and outputs probs_<head> per head: the
    chosen folds' softmax averaged over the flip views, as predict combines them. Every export is checked:
    onnxruntime against PyTorch on images of the run's manifest, max |Δp| ≤ 1e-4, or nothing is written.
    `clsctl predict RUN DATA --engine onnx` runs it.

    Example: clsctl export runs/20260101-120000-baseline --tta hflip
    """
    from toolkit.cli.progress import progress_display
    from toolkit.export import export_run

    with progress_display() as progress:
        result = export_run(run, folds=folds, tta=tta, out=out, opset=opset, per_fold=per_fold, runs_root=runs,
                            progress=progress)
    parity = result.parity
    views = ", ".join(result.views)
    print(f"exported run {result.run.id}: folds {result.folds}, views [{views}], {result.combine} "
          f"({result.seconds:.1f}s)")
    print(f"parity: max |onnxruntime - pytorch| probability {parity['max_abs_diff']:.2e} on {parity['rows']} "
          f"image(s) of the run's manifest (tolerance {parity['tolerance']:.0e})")
    for path in result.files:
        print(f"wrote {path}")
