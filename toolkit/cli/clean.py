"""``clsctl clean``: label errors from a k-fold run's out-of-fold probabilities (cleanlab), or ``--quick``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.options import NameOpt, RunsOpt


def clean(
    target: Annotated[str, typer.Argument(help="A k-fold train run (folder, id or name suffix); with --quick, an "
                                          "ImageFolder or a CSV/Parquet manifest.", metavar="RUN_OR_SOURCE",
                                          show_default=False)],
    quick: Annotated[bool, typer.Option("--quick", help="No trained run: embed every image with a frozen pretrained "
                                        "backbone and get out-of-fold probabilities from a cross-validated linear "
                                        "classifier (minutes on a CPU).")] = False,
    top: Annotated[int, typer.Option("--top", "-t", metavar="N", help="Suspects shown in the terminal (the gallery "
                                     "shows up to 100).")] = 20,
    filter_by: Annotated[str | None, typer.Option(
        "--filter-by", metavar="METHOD", help="cleanlab's filter: prune_by_noise_rate (the default for a run: prune "
        "each confused class pair down to its estimated noise), prune_by_class, both, confident_learning, "
        "predicted_neq_given, low_normalized_margin, low_self_confidence (the default with --quick, where it runs on "
        "both classifiers and a row is flagged when both flag it).", show_default=False)] = None,
    apply: Annotated[str | None, typer.Option("--apply", metavar="drop|relabel", help="Also write clean_manifest.csv: "
                                              "the source manifest with the suspects dropped or relabelled (the source "
                                              "is never changed).", show_default=False)] = None,
    min_quality: Annotated[float | None, typer.Option("--min-quality", metavar="Q", help="With --apply: act only on "
                                                      "suspects whose label quality is below Q [default: every "
                                                      "suspect].", show_default=False)] = None,
    no_duplicates: Annotated[bool, typer.Option("--no-duplicates", help="Skip the search for duplicate images whose "
                                                "labels disagree (it hashes every image).")] = False,
    root: Annotated[Path | None, typer.Option("--root", metavar="DIR", help="With --quick: the folder a manifest's "
                                              "paths are relative to [default: found next to it].",
                                              show_default=False)] = None,
    label: Annotated[str, typer.Option("--label", metavar="COL", help="With --quick: the class column.")] = "label",
    group: Annotated[str | None, typer.Option("--group", "-g", metavar="COL", help="With --quick: keep each group "
                                              "(photo, person) in one cross-validation fold.", show_default=False)] = None,
    backbone: Annotated[str, typer.Option("--backbone", metavar="NAME", help="With --quick: the timm model that "
                                          "embeds the images.")] = "tf_efficientnet_lite0",
    pretrained_file: Annotated[Path | None, typer.Option("--pretrained-file", metavar="FILE", help="With --quick: "
                                                         "local weights for the backbone [default: from the hub].",
                                                         show_default=False)] = None,
    image_size: Annotated[int, typer.Option("--image-size", metavar="PX", help="With --quick: the side images are "
                                            "embedded at.")] = 224,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="Write into this folder instead of "
                                             "a new clean run.", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", metavar="N", help="Processes for hashing and "
                                                "loading [default: all cores].", show_default=False)] = None,
    name: NameOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Find label errors: cleanlab on out-of-fold probabilities, duplicates with other labels, a gallery.

    Writes a `clean` run (parent: the train run) with label_issues.csv, label_conflicts.csv, summary.json
    and gallery.html.

    Example: clsctl clean runs/20260101-120000-baseline --top 20 --apply drop

    Also: clsctl clean data/train --quick --pretrained-file weights/tf_efficientnet_lite0.in1k.safetensors
    """
    from toolkit.cli.progress import progress_display
    from toolkit.report.clean import clean as run_clean

    options: dict[str, Any] = dict(runs_root=runs, out=out, name=name, filter_by=filter_by,
                                   duplicates=not no_duplicates, apply=apply, min_quality=min_quality, workers=workers)
    with progress_display() as progress:
        if quick:
            options.update(root=root, label=label, group=group, backbone=backbone, pretrained_file=pretrained_file,
                           image_size=image_size, progress=progress)
        result = run_clean(target, quick=quick, **options)
    _print(result, top)


def _print(result: Any, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, markup=False, width=None if Console().is_terminal else 160)
    for issues in result.heads:
        h = issues.health
        title = f"{issues.head}: " if len(result.heads) > 1 else ""
        console.print(f"{title}{h['issues']} of {h['rows']} labels flagged ({h['filter_by']}), label health "
                      f"score {h['score']:.3f}")
        table = Table("rank", "path", "label", "suggested", "quality", box=None, title_justify="left",
                      title=f"top {min(top, h['issues'])} suspects")
        for _, row in issues.suspects.head(top).iterrows():
            table.add_row(str(row["rank"]), str(row["path"]), str(row["label"]), str(row["suggested_label"]),
                          f"{row['label_quality']:.3f}")
        console.print(table)
        noisy = [c for c in h["per_class"] if c["label_issues"] > 0][:5]
        if noisy:
            console.print("noise rate per class: " + ", ".join(f"{c['class']} {100 * c['noise_rate']:.1f}%"
                                                              for c in noisy))
        if h["overlapping"]:
            console.print("most overlapping classes: " + ", ".join(f"{p['a']} ~ {p['b']} ({p['examples']} images)"
                                                                   for p in h["overlapping"][:3]))
    if result.conflicts is not None:
        console.print(f"{len(result.conflicts)} duplicate pair(s) with different labels")
        for _, pair in result.conflicts.head(5).iterrows():
            console.print(f"  {pair['a']} [{pair['label_a']}] ~ {pair['b']} [{pair['label_b']}] ({pair['kind']})")
    for kind in ("outliers", "near_duplicates"):
        if kind in result.extra:
            frame = result.extra[kind]
            count = int(frame["is_outlier"].sum()) if kind == "outliers" else len(frame)
            console.print(f"{kind.replace('_', '-')} in embedding space: {count}")
    if result.applied:
        a = result.applied
        console.print(f"--apply {a['mode']}: {a['changed']} row(s) changed, {a['rows_before']} → {a['rows_after']} rows "
                      f"in {a['manifest']}")
        if result.source is not None:
            console.print(f"retrain: clsctl train --recipe {result.source.recipe_path} --set data.manifest={a['manifest']} "
                          f"--set data.root={a['root']} --name {result.source.name or 'run'}-clean")
    for kind, path in result.files.items():
        if not kind.startswith("gallery:"):
            console.print(f"{kind}: {path}")
    if result.run is not None:
        console.print(f"run {result.run.id}")
