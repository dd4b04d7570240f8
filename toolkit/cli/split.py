"""``clsctl split``: assign folds without leakage and show that they are balanced."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.options import NameOpt, RunsOpt


def split(
    source: Annotated[Path, typer.Argument(help="ImageFolder directory, or a CSV/Parquet manifest with a path column.",
                                           show_default=False)],
    folds: Annotated[int, typer.Option("--folds", "-k", help="Number of folds.")] = 5,
    group: Annotated[str | None, typer.Option("--group", "-g", metavar="COL", help="Column whose values never straddle two folds "
                                              "(person, photo, patient).", show_default=False)] = None,
    stratify: Annotated[list[str] | None, typer.Option(
        "--stratify", metavar="COL", help="Column whose class shares every fold keeps [default: the label]; repeat it to "
        "stratify on a combination of columns.", show_default=False)] = None,
    no_stratify: Annotated[bool, typer.Option("--no-stratify", help="Plain (group) k-fold, no stratification.")] = False,
    holdout: Annotated[float | None, typer.Option("--holdout", metavar="FRAC", help="One train/valid split with this validation "
                                                  "fraction instead of k folds.", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fold assignment.")] = 42,
    label: Annotated[str, typer.Option("--label", metavar="COL", help="Column holding the class.")] = "label",
    root: Annotated[Path | None, typer.Option("--root", metavar="DIR", help="Folder the manifest's paths are relative to "
                                              "[default: found next to the manifest].", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="FILE", help="Also write the manifest with its fold column "
                                             "here (.csv or .parquet).", show_default=False)] = None,
    dedup: Annotated[bool, typer.Option("--dedup", help="Hash every image and check that no duplicate pair is "
                                        "split across folds.")] = False,
    hashes: Annotated[Path | None, typer.Option("--hashes", metavar="FILE", help="Check duplicates from an eda run folder or its "
                                                "hashes.parquet (or a pair table with columns a, b).",
                                                show_default=False)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when the audit finds any leakage.")] = False,
    no_shortcuts: Annotated[bool, typer.Option("--no-shortcuts", help="Skip the per-fold shortcut audit (file "
                                               "properties and names that predict the label; reads every header).")] = False,
    name: NameOpt = None,
    runs: RunsOpt = None,
) -> None:
    """Assign folds (grouped, stratified, seeded), audit them for leakage and shortcuts, and record a `split` run.

    Example: clsctl split data/train.csv --folds 5 --group person_id --out folds.csv
    """
    from toolkit.data.leakage import LeakageError
    from toolkit.data.splits import make_split

    strat: list[str] | None = None if no_stratify else (stratify or [label])
    try:
        result = make_split(source, root=root, label=label, folds=folds, group=group, stratify=strat,
                            holdout=holdout, seed=seed, out=out, dedup=dedup, hashes=hashes, strict=strict,
                            name=name, runs=runs, shortcuts=not no_shortcuts)
    except LeakageError as exc:
        if exc.result is not None:
            _print(exc.result)  # the folds are recorded: show them above the error
        raise
    _print(result)


def _pct(share: float) -> str:
    return f"{100 * share:.1f}"


def _folds_text(values: list[float | None]) -> str:
    return " ".join("–" if v is None else f"{v:.2f}" for v in values)


def _print_shortcuts(console: Any, section: dict[str, Any] | None) -> None:
    """The top shortcut finding and the metadata model, fold by fold."""
    if not section:
        return
    if section["skipped"]:
        console.print(f"shortcuts: not audited ({section['skipped']})")
        return
    m = section["metadata_model"]
    if m["fitted"]:
        console.print(f"shortcuts: metadata model balanced accuracy per fold {_folds_text(m['per_fold'])} "
                      f"(chance {m['chance']:.2f})")
    else:
        console.print(f"shortcuts: no metadata model ({m['note']})")
    findings = section["findings"]
    if not findings:
        console.print("shortcuts: none found")
        return
    top = findings[0]
    console.print(f"shortcuts: {len(findings)} feature(s) predict the label; strongest: {top['summary']}")
    console.print(f"  strength per fold: {_folds_text(top['per_fold'])}")
    console.print(f"  what to do: {top['lever']}")


def _print(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    report, audit = result.report, result.audit
    console = Console(width=200 if not Console().is_terminal else None, highlight=False, markup=False)
    grouped = report["group"] is not None
    classes = report["classes"]
    table = Table(box=None, pad_edge=False)
    table.add_column("fold")
    table.add_column("n", justify="right")
    if grouped:
        table.add_column("groups", justify="right")
    for name in classes:
        table.add_column(f"{name} %", justify="right")

    def row(title: str, block: dict[str, Any]) -> list[str]:
        cells = [title, str(block["n"])]
        if grouped:
            cells.append(str(block["groups"]))
        return cells + [_pct(block["share"][c]) for c in classes]

    holdout = report["train_only"] is not None
    for block in report["folds"]:
        table.add_row(*row("valid" if holdout else str(block["fold"]), block))
    if holdout:
        table.add_row(*row("train", report["train_only"]))
    table.add_row(*row("all", report["overall"]), style="bold")
    console.print(table)

    dev = report["max_deviation"]
    if dev is not None:
        where = "the validation set" if holdout else f"fold {dev['fold']}"
        console.print(f"max deviation from the overall class share: {100 * dev['value']:.2f} points "
                      f"({dev['class']}, {where})")
    for note in result.warnings:
        console.print(f"warning: {note}")

    if grouped:
        crossing = audit["groups_crossing"]
        console.print(f"audit: {len(crossing)} {report['group']} group(s) in more than one fold"
                      + (f": {', '.join(map(str, crossing[:10]))}" if crossing else ""))
    dup = audit["duplicates"]
    if dup is not None:
        text = (f"audit: {len(dup['crossing'])} of {dup['matched']} duplicate pair(s) split across folds")
        if dup["unmatched"]:
            text += f" ({dup['unmatched']} pair(s) not in this manifest ignored)"
        console.print(text)
        for pair in dup["crossing"][:10]:
            console.print(f"  {pair['a']} (fold {pair['fold_a']}) ~ {pair['b']} (fold {pair['fold_b']}) "
                          f"[{pair['kind']}, distance {pair['distance']}]")
    console.print("audit: " + ("ok" if audit["ok"] else f"{audit['findings']} finding(s)"))
    _print_shortcuts(console, result.shortcuts)
    for path in result.written:
        console.print(f"wrote {path}")
    console.print(f"run {result.run.id} (image root {result.manifest.attrs.get('root', '')})")
