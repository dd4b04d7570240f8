"""``clsctl clean`` end to end: find the label issues, then draw the gallery of suspects beside them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from toolkit.clean.cleaner import CleanResult, clean_run, clean_source
from toolkit.clean.labels import LabelIssues


def _notes(issues: LabelIssues, result: CleanResult) -> list[str]:
    health = issues.health
    notes = [f"{health['issues']} of {health['rows']} labels flagged ({health['filter_by']}); "
             f"label health score {health['score']:.3f}"]
    worst = [c for c in health["per_class"] if c["noise_rate"] > 0][:3]
    if worst:
        notes.append("noisiest classes: " + ", ".join(f"{c['class']} {100 * c['noise_rate']:.1f}%" for c in worst))
    if health["overlapping"]:
        pairs = health["overlapping"][:3]
        notes.append("most confused pairs: " + ", ".join(f"{p['a']} ~ {p['b']} ({p['examples']})" for p in pairs))
    if result.conflicts is not None:
        notes.append(f"{len(result.conflicts)} duplicate pair(s) with different labels")
    return notes


def write_galleries(result: CleanResult, top: int = 100) -> dict[str, Path]:
    """Draw one gallery of suspects per head into the clean run (or ``--out`` folder)."""
    from toolkit.report.gallery import render_label_gallery

    pages = {}
    base = result.folder.path
    for issues in result.heads:
        out = base if len(result.heads) == 1 else base / "heads" / issues.head
        title = "Label issues" if len(result.heads) == 1 else f"Label issues: {issues.head}"
        pages[issues.head] = render_label_gallery(issues.table, issues.classes, result.root, out, top=top,
                                                  title=title, conflicts=result.conflicts, notes=_notes(issues, result))
    return pages


def clean(target: str | os.PathLike[str], *, quick: bool = False, top: int = 100, **options: Any) -> CleanResult:
    """Clean a train run (or, with ``quick``, a folder or manifest) and write the gallery of suspects.

    Args:
        target: A k-fold train run; with ``quick``, a folder or a manifest.
        quick: Use a frozen pretrained backbone and a cross-validated linear classifier instead of a run.
        top: Suspects shown in the gallery.
        **options: Passed to :func:`toolkit.clean.cleaner.clean_run` or
            :func:`toolkit.clean.cleaner.clean_source`.

    Returns:
        The result, with ``files["gallery"]`` (the first head's page) added.
    """
    result = clean_source(target, **options) if quick else clean_run(target, **options)
    pages = write_galleries(result, top=top)
    result.files["gallery"] = next(iter(pages.values()))
    for head, page in pages.items():
        result.files[f"gallery:{head}"] = page
    return result

