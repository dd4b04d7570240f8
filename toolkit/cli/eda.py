"""``clsctl eda``: what is in this data? (HTML + JSON + PNGs, and a summary table.)"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def eda(
    data: Annotated[Path, typer.Argument(help="ImageFolder root, a folder of unlabeled images, a CSV/Parquet "
                                         "manifest, or the root that --manifest / --pattern paths are relative to.", show_default=False)],
    manifest: Annotated[Path | None, typer.Option("--manifest", "-m", metavar="FILE", help="CSV/Parquet table with a "
                                                  "path column relative to DATA (label and other columns optional).",
                                                  show_default=False)] = None,
    pattern: Annotated[str | None, typer.Option("--pattern", metavar="REGEX", help="Regex with named groups over each "
                                                "relative path; a group named `label` is the class.",
                                                show_default=False)] = None,
    group: Annotated[str | None, typer.Option("--group", "-g", metavar="COL", help="Column that ties images together "
                                              "(photo, person): images per group, and duplicates across groups.",
                                              show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="Output folder, outside the data "
                                             "[default: ./eda/<last part of DATA>; run inside the data: "
                                             "<its parent>/eda/<last part of DATA>].", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", metavar="N", help="Processes [default: all cores].",
                                                show_default=False)] = None,
    thumbs: Annotated[int, typer.Option("--thumbs", metavar="N", help="Thumbnails per class (0: none).")] = 8,
    seed: Annotated[int | None, typer.Option("--seed", metavar="S", help="Show a seeded sample of each class instead "
                                             "of its first N images.", show_default=False)] = None,
    distance: Annotated[int | None, typer.Option("--near-distance", metavar="BITS", help="Largest perceptual-hash "
                                                 "distance (of 64 bits) of a near duplicate [default: 6].",
                                                 show_default=False)] = None,
    no_shortcuts: Annotated[bool, typer.Option("--no-shortcuts", help="Skip the shortcut audit (file properties "
                                               "and names that predict the label).")] = False,
) -> None:
    """Profile a dataset: classes, attributes, groups, sizes, colour, pixel stats, duplicates, outliers, shortcuts.

    Reads every image once on all cores and writes eda.json, eda.html (opens from disk), PNG plots and
    hashes.parquet (for `clsctl split --hashes`) into the output folder. Unreadable files are listed,
    never fatal.

    Example: clsctl eda data/train --out eda/train --seed 0
    """
    from toolkit.cli.progress import progress_display
    from toolkit.report.eda import eda_from_path

    with progress_display() as progress:
        report, out_dir = eda_from_path(data, manifest=manifest, pattern=pattern, group=group, out=out,
                                        workers=workers, thumbs=thumbs, seed=seed, near_dup_distance=distance,
                                        progress=progress, shortcuts=not no_shortcuts)
    _print(report, out_dir)


def _n(x: float | None) -> str:
    return "?" if x is None else (str(int(x)) if float(x).is_integer() else f"{x:g}")


def _shortcut_rows(table: Any, section: dict[str, Any] | None) -> None:
    from rich.markup import escape

    if not section:
        return
    if section["skipped"]:
        table.add_row("shortcuts", f"not audited ({escape(section['skipped'])})")
        return
    m = section["metadata_model"]
    model = f"metadata model: balanced accuracy {m['balanced_accuracy']:.2f}, chance {m['chance']:.2f}"
    findings = section["findings"]
    if not findings:
        table.add_row("shortcuts", f"none found ({model})")
        return
    table.add_row("shortcuts", f"[red]{len(findings)} feature(s) predict the label[/red] ({model})")
    for f in findings[:3]:
        table.add_row("  !", escape(f["summary"]))
    if len(findings) > 3:
        table.add_row("", f"… and {len(findings) - 3} more in eda.html")


def _print(r: dict[str, Any], out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table("", "", box=None, pad_edge=False, show_header=False)
    images = r["images"]
    table.add_row("images", f"{images['total']} ({images['unreadable']} unreadable)")
    for name, t in r["targets"].items():
        if name != r["label_column"] and t["n_classes"] < 2:
            continue  # a constant attribute column says nothing in a summary
        table.add_row(f"{name}", f"{t['n_classes']} values, largest {t['largest']}, smallest {t['smallest']}, "
                      f"imbalance {t['imbalance_ratio']}×")
    if r["groups"]:
        g = r["groups"]
        table.add_row("groups", f"{g['n_groups']} (median {g['images_per_group']['median']} images, "
                      f"{g['mixed_label_groups']} with mixed labels)")
    s = r["sizes"]
    if s["width"]["count"]:
        w, h = s["width"], s["height"]
        table.add_row("size (median)", f"{_n(w['median'])}×{_n(h['median'])} px (width {_n(w['min'])}–{_n(w['max'])}, "
                      f"height {_n(h['min'])}–{_n(h['max'])})")
    table.add_row("formats", ", ".join(f"{k} {v}" for k, v in r["file_formats"].items()))
    table.add_row("modes", ", ".join(f"{k} {v}" for k, v in r["image_modes"].items()))
    gray = r["grayscale"]
    table.add_row("grayscale-looking", f"{gray['count']} ({100 * (gray['share'] or 0):.1f}%)")
    if r["stats"]["mean"] is not None:
        table.add_row("mean (RGB)", ", ".join(f"{v:.4f}" for v in r["stats"]["mean"]))
        table.add_row("std (RGB)", ", ".join(f"{v:.4f}" for v in r["stats"]["std"]))
    d = r["duplicates"]
    p = d["pairs"]
    table.add_row("duplicate pairs", f"exact {p['exact']}, pixel {p['pixel']}, near {p['near']}, "
                  f"mirrored {p['near_flip']} (≤{d['max_distance']} bits; {d['groups']} groups)")
    table.add_row("  label differs", str(d["label_conflicts"]["count"]))
    if r["groups"]:
        table.add_row("  group differs", str(d["group_conflicts"]["count"]))
    o = r["outliers"]
    top = ", ".join(item["path"] for item in o["items"][:3])
    table.add_row("outliers", f"{o['count']} over {o['threshold']}" + (f"; top: {top}" if top else ""))
    _shortcut_rows(table, r.get("shortcuts"))
    for u in r["unreadable"][:5]:
        table.add_row("  unreadable", f"{u['path']}: {u['reason']}")
    if len(r["unreadable"]) > 5:
        table.add_row("", f"… and {len(r['unreadable']) - 5} more in eda.json")
    table.add_row("time", f"{r['timing']['seconds']} s ({r['timing']['images_per_second']} images/s)")
    table.add_row("report", str(Path(out_dir) / "eda.html"))
    console.print(table)
