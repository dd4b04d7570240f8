"""``clsctl explain``: Grad-CAM-family heat maps of where a run's model looks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.options import RunsOpt


def explain(
    run: Annotated[str, typer.Argument(help="Train run: folder, id or name suffix.", show_default=False)],
    images: Annotated[list[Path] | None, typer.Argument(help="Image files, or one folder (an ImageFolder gives "
                                                        "labels) or one CSV/Parquet manifest.", show_default=False)] = None,
    top_losses: Annotated[int | None, typer.Option("--top-losses", metavar="K", help="Instead of IMAGES: the K "
                                                   "out-of-fold rows with the largest loss, each with its fold model.",
                                                   show_default=False)] = None,
    target: Annotated[str, typer.Option("--target", metavar="pred|label|CLASS", help="The class each map is of: "
                                        "the prediction, the given label, or a class name.")] = "pred",
    method: Annotated[str, typer.Option("--method", metavar="gradcam|gradcam++|eigencam", help="Grad-CAM, "
                                        "Grad-CAM++, or Eigen-CAM (class-agnostic, no gradients).")] = "gradcam",
    fold: Annotated[str | None, typer.Option("--fold", metavar="best|K", help="The fold model for IMAGES "
                                             "[default: best].", show_default=False)] = None,
    head: Annotated[str | None, typer.Option("--head", help="The head of a multi-head run [default: the first].",
                                             show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="Output folder, replaced as a whole "
                                             "[default: RUN/explain/top-losses, or RUN/explain/<images' name>].",
                                             show_default=False)] = None,
    runs: RunsOpt = None,
) -> None:
    """Show where the model looks: a PNG per image (image, heat map overlay, given/predicted label) and a page.

    Each image goes through the fold's own eval preprocessing; its map is drawn back on the image as the
    file holds it. Writes <i>-<name>.png, explanations.json and index.html.

    Example: clsctl explain runs/20260101-120000-baseline --top-losses 12
    """
    from toolkit.cli.progress import progress_display
    from toolkit.export import explain as run_explain

    with progress_display() as progress:
        result = run_explain(run, images or (), top_losses=top_losses, target=target, method=method, fold=fold,
                             head=head, out=out, runs_root=runs, progress=progress)
    for item in result.items:
        loss = f" loss {item.loss:.2f}" if item.loss is not None else ""
        print(f"{item.id}: {item.caption()}{loss} → {item.png}")
    print(f"page: {result.files['html']}")
