"""The calibration, decision and composition records of a run, as the experiment report shows them.

Training records each head's calibration (``summary.json["calibration"][head]``, see
:func:`toolkit.calibration.calibration_record`); an ensemble records the calibration it applied to its
members, the decision rule that turned its vote into labels and, when it composed per-attribute runs,
the parts. Runs written before these records existed have none of them and get None or empty lists
here, so their sections look as they always did. Every value is read defensively (a record a later
release extends must not break the page) and returned as plain text for the autoescaping template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toolkit.report.entries import Entry

__all__ = ["calibration_blocks", "composition_view", "decision_marker", "decision_view"]

#: Offsets shown per decision; the rest are counted (a 500-class rule is not a 500-row table).
OFFSETS_SHOWN = 20
_PART_SCORES = ("accuracy", "macro_f1", "balanced_accuracy")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _f(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else ""


def _signed(value: Any) -> str:
    return f"{value:+.4f}" if _is_number(value) else ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _before_after(before: Mapping[str, Any], after: Mapping[str, Any], key: str) -> str:
    if not _is_number(before.get(key)) and not _is_number(after.get(key)):
        return ""
    return f"{_f(before.get(key))} → {_f(after.get(key))}"


def _fitted(method: str, params: Mapping[str, Any]) -> str:
    """What a fitted method is: the temperature, or how many per-class scales and biases."""
    if _is_number(params.get("temperature")):
        return f"T = {params['temperature']:.3f}"
    weights = params.get("weights")
    if isinstance(weights, list):
        return f"a scale and a bias for each of {len(weights)} classes"
    return method


def _head_block(head: str, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """A train run head's calibration record: one row per fitted method."""
    before = _mapping(record.get("before"))
    folds = record.get("folds")
    scored = (f"cross-fitted over {folds} folds" if record.get("crossfit")
              else "in-sample (fewer than two folds)")
    rows = []
    for method, params in record.items():
        if method in ("before", "rows", "folds", "crossfit") or not isinstance(params, Mapping):
            continue
        after = _mapping(params.get("after"))
        rows.append((method, _fitted(method, params), _before_after(before, after, "nll"),
                     _before_after(before, after, "ece"), scored))
    if not rows:
        return None
    n = record.get("rows")
    return {"head": head, "header": ["method", "fitted", "NLL before → after", "ECE before → after", "after scored"],
            "rows": rows, "note": f"fitted on {n} out-of-fold rows; applied only when predict or ensemble asks"
            if _is_number(n) else "applied only when predict or ensemble asks"}


def _member_block(head: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """An ensemble's calibration: the method, and per run member what it fitted and what it changed."""
    method = str(record.get("method") or "")
    where = str(record.get("where") or "")
    rows = []
    for name, fitted in _mapping(record.get("members")).items():
        if not isinstance(fitted, Mapping):
            rows.append((str(name), "not calibrated (a prediction file)", "", ""))
            continue
        before, after = _mapping(fitted.get("before")), _mapping(fitted.get("after"))
        rows.append((str(name), _fitted(method, fitted), _before_after(before, after, "nll"),
                     _before_after(before, after, "ece")))
    note = f"{method} calibration" + (f", {where}" if where else "")
    if not rows:  # a composition's parts: their own runs record what it changed
        note += "; each part run's section shows its numbers"
    return {"head": head, "header": ["member", "fitted", "NLL before → cross-fitted after",
                                     "ECE before → cross-fitted after"], "rows": rows, "note": note}


def calibration_blocks(entry: Entry) -> list[dict[str, Any]]:
    """The run's calibration, one block per head (train) or one for the members (ensemble); [] without a record.

    Each block is ``{"head", "header", "rows", "note"}``: the head whose reliability diagram it goes with,
    a table (no rows for a composition, whose parts were calibrated), and a line saying what it shows.
    """
    record = entry.summary.get("calibration")
    if not isinstance(record, Mapping):
        return []
    if entry.kind == "ensemble":
        head = entry.heads[0] if entry.heads else "label"
        return [_member_block(head, record)] if record.get("method") else []
    blocks = [_head_block(str(h), r) for h, r in record.items() if isinstance(r, Mapping)]
    return [b for b in blocks if b is not None]


def decision_view(entry: Entry) -> dict[str, Any] | None:
    """How an ensemble's labels were decided: the rule, its cross-fitted and in-sample gain, the offsets.

    None for a run that records no decision (a train run, or an ensemble written before decisions were).
    """
    decision = entry.summary.get("decision")
    if entry.kind != "ensemble" or not isinstance(decision, Mapping):
        return None
    rule = str(decision.get("rule") or "argmax")
    requested = str(decision.get("requested") or rule)
    tuned = rule != "argmax"
    offsets = [(str(c), v) for c, v in _mapping(decision.get("offsets")).items() if _is_number(v) and v != 0]
    offsets.sort(key=lambda cv: (-abs(cv[1]), cv[0]))
    scores = []
    if requested != "argmax":
        scores = [("cross-fitted (each fold decided by offsets fitted without it)",
                   _f(decision.get("crossfit_argmax")), _f(decision.get("crossfit_tuned")),
                   _signed(decision.get("crossfit_gain"))),
                  ("in-sample (optimistic: fitted and scored on the same rows)",
                   _f(decision.get("in_sample_argmax")), _f(decision.get("in_sample_tuned")),
                   _signed(decision.get("in_sample_gain")))]
    per_fold = [(str(f.get("fold", "")), _f(f.get("argmax")), _f(f.get("tuned")),
                 _signed(f["tuned"] - f["argmax"]) if _is_number(f.get("tuned")) and _is_number(f.get("argmax"))
                 else "") for f in decision.get("per_fold") or [] if isinstance(f, Mapping)]
    return {"applied": str(decision.get("applied") or rule), "requested": requested, "tuned": tuned,
            "refused": requested != "argmax" and not tuned, "note": str(decision.get("note") or ""),
            "metric": str(decision.get("metric") or "macro_f1"), "scores": scores, "per_fold": per_fold,
            "offsets": [(c, f"{v:+.1f}") for c, v in offsets[:OFFSETS_SHOWN]],
            "more_offsets": max(0, len(offsets) - OFFSETS_SHOWN)}


def decision_marker(entry: Entry) -> str:
    """The leaderboard's short word on tuned decisions and calibration; empty for a run that records neither."""
    out = []
    decision = entry.summary.get("decision")
    if entry.kind == "ensemble" and isinstance(decision, Mapping):
        if decision.get("rule") not in (None, "argmax"):
            gain = decision.get("crossfit_gain")
            out.append("f1 offsets" + (f" {gain:+.4f} cross-fitted" if _is_number(gain) else ""))
        elif decision.get("requested") not in (None, "argmax"):
            out.append("argmax (offsets refused)")
    calibration = entry.summary.get("calibration")
    if entry.kind == "ensemble" and isinstance(calibration, Mapping) and calibration.get("method"):
        out.append(f"{calibration['method']} calibrated")
    return "; ".join(out)


def composition_view(entry: Entry) -> dict[str, Any] | None:
    """The per-attribute runs an ensemble composed, and the combined label's scores; None when it composed none."""
    composed = entry.summary.get("composed")
    if entry.kind != "ensemble" or not isinstance(composed, Mapping):
        return None
    parts = [p for p in composed.get("parts") or [] if isinstance(p, Mapping)]
    rows = []
    for p in parts:
        oof = _mapping(p.get("oof"))
        classes = p.get("classes")
        rows.append((str(p.get("part", "")), str(p.get("run", "")), str(p.get("head", "")),
                     str(len(classes)) if isinstance(classes, list) else "", *(_f(oof.get(k)) for k in _PART_SCORES)))
    into = str(composed.get("into") or "")
    combined = _mapping(entry.summary.get("oof"))
    n_classes = len(entry.classes.get(entry.heads[0], [])) if entry.heads else 0
    rows.append((f"combined: {into}", "this run", "", str(n_classes) if n_classes else "",
                 *(_f(combined.get(k)) for k in _PART_SCORES)))
    columns = [str(c) for c in composed.get("columns") or []]
    calibrated = composed.get("calibrated")
    return {"into": into, "formula": " × ".join(columns), "separator": str(composed.get("separator") or ""),
            "calibrated": f"calibrated ({calibrated}) before the product" if calibrated else "not calibrated",
            "prediction_set": str(composed.get("prediction_set") or ""), "rows": rows,
            "header": ["part", "run", "head", "classes", *(f"OOF {k}" for k in _PART_SCORES)]}
