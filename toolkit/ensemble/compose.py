"""Per-attribute runs composed into one combined label (``clsctl ensemble --compose mask=A gender=B age=C``).

A combined label such as the mask competition's 18 classes (mask × gender × age) can be learned as
three separate single-attribute runs. Composing them treats the attributes as independent given the
image, as a multi-head model does: the combined probability of ``(mask, gender, age)`` is the product
of the parts' probabilities, flattened in the order ``[targets.combine]`` gives (most significant part
first, class names joined by its separator). The true combined label of a row is its parts' labels
combined the same way.

The parts must have been trained on the same rows with the same folds (rows are matched by id; a
row in different folds is refused, because then no part's probabilities are out-of-fold for the
same split). A part is ``PART=RUN``: a single-head run's one head, or the head named ``PART`` of a
multi-head run (so a multi-head run's heads compose the same way, ``mask=R gender=R age=R``).

The result is one ensemble member whose out-of-fold rows and predictions are the composed
probabilities; everything after that (scores, decisions, submission, the ensemble run) is the
ensemble's.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from toolkit.ensemble.members import Member, align_ids, common_prediction_set
from toolkit.errors import DataError, RunError, UsageError, examples
from toolkit.metrics import classification_metrics, combine_indices, combined_probabilities
from toolkit.store import Run, RunStore
from toolkit.store.tables import probability_arrays, probability_frame


@dataclass
class Part:
    """One attribute: the run and head that predict it."""

    name: str
    run: Run
    head: str
    classes: list[str]
    heads: list[str]
    all_classes: dict[str, list[str]]


def parse_parts(refs: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
    """``["mask=RUN_A", "gender=RUN_B"]`` → ``{"mask": "RUN_A", "gender": "RUN_B"}`` (argument order kept).

    Raises:
        UsageError: an argument is not ``PART=RUN``, or a part is given twice.
    """
    if not refs:
        raise UsageError("--compose needs the parts", "e.g. clsctl ensemble --compose mask=RUN_A gender=RUN_B age=RUN_C")
    parts: dict[str, str] = {}
    for ref in refs:
        name, sep, run = os.fspath(ref).partition("=")
        if not sep or not name.strip() or not run.strip():
            raise UsageError(f"--compose: {os.fspath(ref)!r} is not PART=RUN",
                             "name each part after a column of the [targets.combine] label, e.g. mask=runs/<id>")
        if name.strip() in parts:
            raise UsageError(f"--compose: part {name.strip()!r} is given twice", "give each part one run")
        parts[name.strip()] = run.strip()
    return parts


def _part(name: str, ref: str, runs_root: str | Path | None) -> Part:
    run = RunStore(runs_root).open(ref)
    if run.kind not in ("train", "ensemble"):
        raise RunError(f"--compose {name}={ref}: run {run.id} is a `{run.kind}` run", "compose train or ensemble runs")
    heads, classes = run.read_classes()
    if name in heads:
        head = name
    elif len(heads) == 1:
        head = heads[0]
    else:
        raise UsageError(f"--compose {name}={ref}: run {run.id} has heads {', '.join(heads)} and none is named {name!r}",
                         f"name the part after one of its heads, e.g. {heads[0]}={ref}")
    if not run.has_oof():
        raise RunError(f"--compose {name}={ref}: run {run.id} has no oof.parquet",
                       "compose runs whose folds all finished (k-fold train runs)")
    return Part(name, run, head, list(classes[head]), heads, classes)


def combine_spec(parts: Sequence[Part], into: str | None) -> tuple[str, list[str], str]:
    """The ``[targets.combine]`` definition the parts compose into: its name, columns and separator.

    The recipes of the part runs are read; those that define it must agree.

    Raises:
        UsageError: no recipe defines ``into`` (the defined names are listed), ``into`` is not given and
            not exactly one definition combines the parts, or the definition's columns are not the parts.
        DataError: two part runs define it differently.
    """
    found: dict[str, dict[str, tuple[tuple[str, ...], str, str]]] = {}
    for part in parts:
        if part.run.kind != "train":
            continue
        for name, spec in part.run.read_recipe().targets.combine.items():
            found.setdefault(name, {})[part.run.id] = (tuple(spec.columns), spec.separator, part.run.id)
    given = sorted(p.name for p in parts)
    if into is None:
        matching = [n for n, defs in found.items() if any(sorted(c) == given for c, _, _ in defs.values())]
        if len(matching) != 1:
            raise UsageError(f"--compose {', '.join(given)}: " + (
                f"{len(matching)} [targets.combine] definitions combine these parts ({', '.join(matching)})" if matching
                else "no [targets.combine] definition in the runs' recipes combines exactly these parts"),
                "name the combined label with --into NAME" + (f" (defined: {', '.join(sorted(found))})" if found else
                                                              "; define [targets.combine.NAME] columns = [...] in the recipe"))
        into = matching[0]
    if into not in found:
        raise UsageError(f"--into {into}: no run's recipe defines [targets.combine.{into}]",
                         f"defined: {', '.join(sorted(found))}" if found else
                         "the part runs' recipes need [targets.combine.NAME] columns = [...]")
    definitions = {(c, s) for c, s, _ in found[into].values()}
    if len(definitions) > 1:
        shown = [f"{rid}: columns {list(c)}, separator {s!r}" for rid, (c, s, _) in found[into].items()]
        raise DataError(f"the part runs define [targets.combine.{into}] differently ({'; '.join(shown)})",
                        "compose runs trained from the same recipe")
    columns, separator = next(iter(definitions))
    if sorted(columns) != given:
        lacking = [c for c in columns if c not in given]
        extra = [p for p in given if p not in columns]
        raise UsageError(f"--compose: [targets.combine.{into}] combines {', '.join(columns)}; "
                         + "; ".join(x for x in (f"missing part(s) {', '.join(lacking)}" if lacking else "",
                                                  f"unknown part(s) {', '.join(extra)}" if extra else "") if x),
                         f"give one PART=RUN for each of {', '.join(columns)}")
    return into, list(columns), separator


def _check_folds(parts: Sequence[Part], frames: Sequence[pd.DataFrame], orders: Sequence[np.ndarray]) -> np.ndarray | None:
    ref = frames[0].iloc[orders[0]]
    ids = ref["id"].astype(str).to_numpy()
    has = ["fold" in f.columns for f in frames]
    if any(has) and not all(has):
        lacking = [p.name for p, h in zip(parts, has, strict=True) if not h]
        raise DataError(f"--compose: the out-of-fold rows of part(s) {', '.join(lacking)} record no folds",
                        "compose runs trained with the same k-fold split")
    if not all(has):
        return None
    folds = ref["fold"].to_numpy(dtype=np.int64)
    for part, frame, order in zip(parts[1:], frames[1:], orders[1:], strict=True):
        other = frame.iloc[order]["fold"].to_numpy(dtype=np.int64)
        bad = np.flatnonzero(other != folds)
        if bad.size:
            shown = [f"{ids[i]} (fold {folds[i]} vs {other[i]})" for i in bad]
            raise DataError(f"--compose: folds differ between {parts[0].name} ({parts[0].run.id}) and {part.name} "
                            f"({part.run.id}) on {bad.size} of {len(ids)} row(s): {examples(shown)}",
                            "compose runs trained on the same split (the same split.seed, folds and group, "
                            "or the same manifest's fold column)")
    return folds


def _calibrated(parts: Sequence[Part], method: str | None, probs: dict[str, np.ndarray],
                folds: np.ndarray | None = None, *, record: bool = True) -> dict[str, np.ndarray]:
    """Each part's probabilities calibrated; out-of-fold rows (``folds`` given) cross-fitted by fold."""
    if method is None:
        return probs
    from toolkit.calibration import apply_crossfit
    from toolkit.train.results import run_calibration

    return {p.name: apply_crossfit(probs[p.name], folds, run_calibration(p.run, record=record)[p.head], method)
            for p in parts}


def compose_member(refs: Sequence[str | os.PathLike[str]], into: str | None = None, *,
                   runs_root: str | Path | None = None, predictions: str | None = None,
                   calibrate: str | None = None, record: bool = True) -> tuple[Member, dict[str, Any]]:
    """Compose ``PART=RUN`` arguments into one member predicting the combined label.

    Args:
        refs: ``PART=RUN`` per part of the combined label.
        into: the ``[targets.combine]`` name; None picks the one definition over exactly these parts.
        runs_root: where runs are looked up.
        predictions: the prediction set to compose (default: the newest every part run has).
        calibrate: ``temperature`` or ``vector`` to calibrate each part before the product; None not to.
        record: save a part run's first-use calibration into its summary (False when nothing is written).

    Returns:
        The member (its ``parts`` are the part runs) and what summary.json records about the composition.

    Raises:
        UsageError: bad parts or combined label. DataError: rows, folds or prediction sets that do not align.
    """
    wanted = parse_parts(refs)
    parts = [_part(name, ref, runs_root) for name, ref in wanted.items()]
    into, columns, separator = combine_spec(parts, into)
    parts = sorted(parts, key=lambda p: columns.index(p.name))
    combined_classes = [separator.join(c) for c in itertools.product(*(p.classes for p in parts))]
    sizes = [len(p.classes) for p in parts]

    frames = [p.run.read_oof() for p in parts]
    orders = align_ids([(f"{p.name} ({p.run.id})", f) for p, f in zip(parts, frames, strict=True)], "out-of-fold")
    folds = _check_folds(parts, frames, orders)
    probs, labels = {}, {}
    for p, frame, order in zip(parts, frames, orders, strict=True):
        arrays, truth, _ = probability_arrays(frame.iloc[order].reset_index(drop=True), p.heads, p.all_classes,
                                              what=f"out-of-fold table of run {p.run.id}")
        if truth is None:
            raise RunError(f"run {p.run.id}'s out-of-fold table has no labels", "retrain it")
        probs[p.name], labels[p.name] = arrays[p.head], truth[p.head]
    part_scores = {p.name: classification_metrics(labels[p.name], probs[p.name], p.classes) for p in parts}
    probs = _calibrated(parts, calibrate, probs, folds, record=record)
    y = combine_indices([labels[p.name] for p in parts], sizes)
    ref = frames[0].iloc[orders[0]].reset_index(drop=True)
    ids = ref["id"].astype(str).tolist()
    paths = ref["path"].tolist() if "path" in ref.columns else None
    oof = probability_frame(ids, paths, {"label": combined_probabilities([probs[p.name] for p in parts])},
                            {"label": combined_classes}, folds=folds, labels={"label": y})

    runs = list({p.run.id: p.run for p in parts}.values())
    prediction_set = common_prediction_set(runs, predictions)
    test = None
    if prediction_set is not None:
        sets = {r.id: r.read_predictions(prediction_set) for r in runs}
        test_frames = [sets[p.run.id] for p in parts]
        order_t = align_ids([(f"{p.name} ({p.run.id})", f) for p, f in zip(parts, test_frames, strict=True)],
                            "prediction")
        test_probs = {}
        for p, frame, order in zip(parts, test_frames, order_t, strict=True):
            arrays, _, _ = probability_arrays(frame.iloc[order].reset_index(drop=True), p.heads, p.all_classes,
                                              what=f"prediction set {prediction_set!r} of run {p.run.id}")
            test_probs[p.name] = arrays[p.head]
        test_probs = _calibrated(parts, calibrate, test_probs, record=record)
        ref_t = test_frames[0].iloc[order_t[0]].reset_index(drop=True)
        test = probability_frame(ref_t["id"].astype(str).tolist(),
                                 ref_t["path"].tolist() if "path" in ref_t.columns else None,
                                 {"label": combined_probabilities([test_probs[p.name] for p in parts])},
                                 {"label": combined_classes})
    source = " ".join(f"{p.name}={p.run.id}" for p in parts)
    member = Member(into, source, None, combined_classes, oof, test, parts=runs)
    info = {"into": into, "columns": columns, "separator": separator, "prediction_set": prediction_set,
            "calibrated": calibrate,
            "parts": [{"part": p.name, "run": p.run.id, "head": p.head, "classes": p.classes,
                       "oof": {k: part_scores[p.name][k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}}
                      for p in parts]}
    return member, info

