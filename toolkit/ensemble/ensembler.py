"""``clsctl ensemble``: vote several runs (and prediction files) into one, with weights chosen on OOF.

The result is an ``ensemble`` run (parents = the member runs)::

    runs/<time>-<name>/
      run.json                     kind ensemble, parents
      oof.parquet                  the ensemble's out-of-fold scores (same schema as a train run's)
      summary.json                 members, weights, how they were chosen, OOF scores, per-class table,
                                   the decision rule (and its cross-fitted gain), calibration, composition
      predictions/<NAME>.parquet   the ensemble of the members' common prediction set, and <NAME>.csv
      predictions/<NAME>.json      how the submission's labels were decided

Out-of-fold rows are aligned by id; members must agree on class names and labels. With ``decide="f1"``
the submitted labels are ``argmax(log score + offsets)``; the offsets' cross-fit re-chooses fitted
weights without each fold as well, so the reported gain is nested, never in-sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from toolkit.calibration import METHODS as CALIBRATIONS
from toolkit.calibration import log_probs
from toolkit.decisions import DECISIONS, Decision, tune_decisions
from toolkit.ensemble.members import (
    Member,
    align_ids,
    calibrate_member,
    check_classes,
    check_labels,
    extract_matrices,
    load_members,
)
from toolkit.ensemble.selection import METRICS, bagged_greedy, crossfit_labels, fast_score, fit_weights
from toolkit.ensemble.voting import VOTES, combine, normalize_weights
from toolkit.errors import DataError, UsageError
from toolkit.store.tables import probability_frame


@dataclass
class EnsembleResult:
    """What :func:`ensemble` produced (``run`` is None when nothing was written)."""

    members: list[Member]
    classes: list[str]
    vote: str
    metric: str
    method: str  # equal | given | fit | greedy
    weights: np.ndarray
    member_scores: dict[str, dict[str, Any]] | None = None
    oof_metrics: dict[str, Any] | None = None
    crossfit_score: float | None = None
    selection: list[dict[str, Any]] | None = None  # greedy: one entry per bag
    per_class: dict[str, Any] | None = None
    cv: dict[str, Any] | None = None  # per-fold mean ± std of the ensemble's OOF metrics
    prediction_set: str | None = None
    test_ids: list[str] | None = None
    test_scores: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    run: Any = None
    decision: Decision | None = None
    composed: dict[str, Any] | None = None  # --compose: the combined label and its parts
    calibration: dict[str, Any] | None = None  # --calibrate: the method and each member's parameters

    @property
    def decision_rule(self) -> str:
        """What turned the scores into the submitted labels."""
        rule = "hard vote" if self.vote == "hard" else f"argmax of the {self.vote} vote"
        if self.decision is not None and self.decision.offsets is not None:
            rule = f"macro-F1 offsets on the log {self.vote} vote"
        return rule

    def prediction_info(self) -> dict[str, Any]:
        """What the prediction set's .json records: how its labels were decided."""
        return {"name": self.prediction_set, "kind": "ensemble", "vote": self.vote, "weights_from": self.method,
                "decision": self.decision_rule,
                "offsets": None if self.decision is None else self.decision.summary()["offsets"],
                "calibration": None if self.calibration is None else self.calibration["method"],
                "composed": None if self.composed is None else self.composed["into"]}

    @property
    def oof_score(self) -> float | None:
        return None if self.oof_metrics is None else float(self.oof_metrics[self.metric])

    def summary(self) -> dict[str, Any]:
        """The summary.json content."""
        names = [m.name for m in self.members]
        out: dict[str, Any] = {
            "kind": "ensemble", "metric": self.metric, "vote": self.vote, "weights_from": self.method,
            "heads": ["label"], "classes": {"label": self.classes},
            "members": [{"name": m.name, "source": m.source, "kind": "run" if m.is_run else "file",
                         "weight": float(w),
                         "oof": None if self.member_scores is None else
                         {k: self.member_scores[m.name][k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}}
                        for m, w in zip(self.members, self.weights, strict=True)],
            "weights": dict(zip(names, (float(w) for w in self.weights), strict=True)),
            "prediction_set": self.prediction_set, "notes": self.notes,
        }
        if self.oof_metrics is not None:
            out["oof"] = self.oof_metrics
            out["oof_rows"] = int(self.oof_metrics["n"])
            out["oof_score"] = self.oof_score
            out["cv"] = self.cv
        if self.crossfit_score is not None:
            out["crossfit_score"] = self.crossfit_score
        if self.selection is not None:
            out["selection"] = [{**bag, "members": [names[i] for i in bag["members"]],
                                 "path": [{**p, "member": names[p["member"]]} for p in bag["path"]]}
                                for bag in self.selection]
        if self.per_class is not None:
            out["per_class"] = self.per_class
        out["decision"] = {**(self.decision.summary() if self.decision is not None else
                              {"requested": "argmax", "rule": "argmax", "offsets": None}), "applied": self.decision_rule}
        if self.calibration is not None:
            out["calibration"] = self.calibration
        if self.composed is not None:
            out["composed"] = self.composed
        return out


def parse_weights(text: str | Sequence[float] | None) -> str | list[float] | None:
    """``None``, ``"fit"`` or a list of floats from ``--weights``."""
    if text is None or isinstance(text, list | tuple):
        return None if text is None else [float(x) for x in text]
    value = str(text).strip().lower()
    if value == "fit":
        return "fit"
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--weights {text!r} is neither `fit` nor a comma list of numbers",
                         "e.g. --weights 1,2,1 or --weights fit") from None


def _per_class(member_scores: dict[str, dict[str, Any]], ensemble_scores: dict[str, Any],
               classes: list[str]) -> dict[str, Any]:
    recall = {name: s["per_class_recall"] for name, s in member_scores.items()}
    best = {c: max(recall, key=lambda n, c=c: (recall[n][c], -list(recall).index(n))) for c in classes}
    return {"classes": classes, "members": recall, "ensemble": ensemble_scores["per_class_recall"], "best": best}


def ensemble(refs: Sequence[str | Path], *, vote: str = "soft", weights: str | Sequence[float] | None = None,  # noqa: C901
             select: str | None = None, metric: str = "macro_f1", predictions: str | None = None,
             name: str | None = None, bags: int = 1, runs_root: str | Path | None = None,
             sample_submission: str | Path | None = None, seed: int = 0, write: bool = True,
             calibrate: str | None = None, decide: str = "argmax", compose: bool = False,
             into: str | None = None) -> EnsembleResult:
    """Combine members into an ensemble run.

    Args:
        refs: runs (folders, ids, name suffixes, globs) and prediction files (.parquet probabilities,
            .csv submissions).
        vote: ``soft`` (weighted mean probability), ``hard`` (weighted majority) or ``rank``.
        weights: one per member, ``"fit"`` (coordinate ascent on OOF), or None (equal, or greedy's).
        select: ``"greedy"`` for Caruana forward selection on OOF.
        metric: ``macro_f1`` or ``accuracy``, what fitting and selection maximize.
        predictions: the runs' prediction set to ensemble (default: the newest one they all have).
        name: the ensemble run's name.
        bags: greedy selection over this many random halves of the members (1 = plain).
        runs_root: where runs are looked up and the ensemble run is written.
        sample_submission: a CSV whose ids, order and columns the submission copies.
        seed: seed of the bags.
        write: create the run (False: only compute).
        calibrate: ``temperature`` or ``vector``: rescale each run member (or composed part) with its run's
            calibration before voting; None: as they are.
        decide: ``argmax``, or ``f1`` for per-class offsets tuned for macro-F1 on the out-of-fold rows
            (kept only when their cross-fitted gain is positive; see :mod:`toolkit.decisions`).
        compose: ``refs`` are ``PART=RUN`` pairs composed into one combined label (see
            :mod:`toolkit.ensemble.compose`), which is then the only member.
        into: with ``compose``, the ``[targets.combine]`` name (default: the one over exactly the parts).

    Raises:
        UsageError: bad options. DataError: class lists or rows that do not align (the message names them).
    """
    if vote not in VOTES:
        raise UsageError(f"--vote {vote!r} is not one of {', '.join(VOTES)}", "use soft, hard or rank")
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r} is not one of {', '.join(METRICS)}", "use macro_f1 or accuracy")
    if select not in (None, "greedy"):
        raise UsageError(f"--select {select!r} is unknown", "the only selection method is greedy")
    parsed = parse_weights(weights)
    if select is not None and parsed is not None:
        raise UsageError("--select greedy sets the weights itself", "drop --weights, or drop --select")
    if decide not in DECISIONS:
        raise UsageError(f"--decide {decide!r} is not one of {', '.join(DECISIONS)}", "use argmax or f1")
    if decide != "argmax" and vote == "hard":
        raise UsageError("--decide f1 shifts scores, and hard-vote scores are vote shares",
                         "use --vote soft (or rank) with --decide f1")
    if calibrate is not None and calibrate not in CALIBRATIONS:
        raise UsageError(f"--calibration {calibrate!r} is not one of {', '.join(CALIBRATIONS)}",
                         "use temperature or vector")
    if into is not None and not compose:
        raise UsageError("--into names the label that --compose builds", "add --compose, or drop --into")
    composed = None
    calibrated: dict[str, Any] = {}
    if compose:
        from toolkit.ensemble.compose import compose_member

        member, composed = compose_member(refs, into, runs_root=runs_root, predictions=predictions,
                                          calibrate=calibrate, record=write)
        members, prediction_set, skipped = [member], composed["prediction_set"], []
    else:
        members, prediction_set, skipped = load_members(refs, runs_root, predictions)
        if calibrate is not None:
            calibrated = {m.name: calibrate_member(m, calibrate, record=write) for m in members}
    classes = check_classes(members)
    n_classes = len(classes)
    if vote != "hard" and any(m.labels_only for m in members):
        labels_only = [m.name for m in members if m.labels_only]
        raise UsageError(f"member(s) {', '.join(labels_only)} hold labels only, which supports hard voting only",
                         "use --vote hard, or give their probabilities")
    method = "greedy" if select else ("fit" if parsed == "fit" else ("given" if parsed else "equal"))
    if isinstance(parsed, list):
        w = normalize_weights(parsed, len(members))
    else:
        w = normalize_weights(None, len(members))
    result = EnsembleResult(members=members, classes=classes, vote=vote, metric=metric, method=method, weights=w,
                            prediction_set=prediction_set, notes=[f"skipped {s}" for s in skipped],
                            composed=composed, calibration=_calibration_info(calibrate, calibrated, composed))
    result.notes += [f"not calibrated: {name} is a prediction file" for name, c in calibrated.items() if c is None]

    no_oof = [m.name for m in members if m.oof is None]
    if no_oof and decide != "argmax":
        raise UsageError(f"--decide {decide} is tuned on out-of-fold predictions, which member(s) "
                         f"{', '.join(no_oof)} do not have", "pass runs instead of prediction files, or drop --decide")
    if no_oof and method in ("fit", "greedy"):
        raise UsageError(f"{'--select greedy' if select else '--weights fit'} needs out-of-fold predictions, "
                         f"which member(s) {', '.join(no_oof)} do not have",
                         "give weights (--weights 1,1,...) or pass runs instead of prediction files")
    oof_frame = None
    if not no_oof:
        orders = align_ids([(m.name, m.oof) for m in members], "out-of-fold")
        label_names = check_labels(members, orders)
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({v for v in label_names if v not in index})
        if unknown:
            raise DataError(f"out-of-fold labels {unknown} are not in the class list {classes}",
                            "the runs' oof.parquet and summary.json disagree; retrain them")
        y = np.array([index[v] for v in label_names], dtype=np.int64)
        x = extract_matrices(members, "oof", orders, classes)
        ref = members[0].oof  # every member's table now has the aligned row order
        folds = ref["fold"].to_numpy() if "fold" in ref.columns else np.zeros(len(ref), dtype=np.int64)
        result.member_scores = {m.name: _scores(y, xi, classes) for m, xi in zip(members, x, strict=True)}

        def choose(xs: list[np.ndarray], ys: np.ndarray) -> np.ndarray:
            if method == "fit":
                return fit_weights(xs, ys, n_classes, vote=vote, metric=metric)
            if method == "greedy":
                return bagged_greedy(xs, ys, n_classes, vote=vote, metric=metric, bags=bags, seed=seed)[0]
            return result.weights

        if method == "fit":
            result.weights = fit_weights(x, y, n_classes, vote=vote, metric=metric)
        elif method == "greedy":
            result.weights, result.selection = bagged_greedy(x, y, n_classes, vote=vote, metric=metric, bags=bags,
                                                             seed=seed)
        scores, labels = combine(vote, x, result.weights, n_classes)
        if decide != "argmax":
            result.decision = _decide(decide, method, choose, x, y, folds, scores, result.weights, vote, classes)
            plain = result.decision.crossfit_argmax_labels
            if method in ("fit", "greedy") and plain is not None:
                # the decisions' cross-fit chose the weights without each fold too: its argmax is the honest vote
                result.crossfit_score = fast_score(y, plain, n_classes, metric)
            result.notes.append(result.decision.note)
        elif method in ("fit", "greedy"):
            honest = crossfit_labels(choose, x, y, folds, vote, n_classes)
            if honest is not None:
                result.crossfit_score = fast_score(y, honest, n_classes, metric)
        result.oof_metrics = _scores(y, scores if vote == "soft" else labels, classes)
        result.cv = _cv(y, scores if vote == "soft" else labels, folds, classes)
        result.per_class = _per_class(result.member_scores, result.oof_metrics, classes)
        oof_frame = probability_frame(ref["id"].astype(str).tolist(),
                                      ref["path"].tolist() if "path" in ref.columns else None,
                                      {"label": scores}, {"label": classes}, folds=folds, labels={"label": y},
                                      preds={"label": labels})
    else:
        result.notes.append(f"no out-of-fold score: member(s) {', '.join(no_oof)} are prediction files")

    test_frame = submission = None
    missing_test = [m.name for m in members if m.test is None]
    if missing_test:
        if len(members) == 1 and (members[0].is_run or members[0].parts):
            result.notes.append(f"no test predictions: {members[0].name} has no prediction set "
                                "(clsctl predict RUN DATA --name NAME)")
        elif any(m.test is not None for m in members) or any(m.is_run for m in members):
            result.notes.append(f"no test predictions: member(s) {', '.join(missing_test)} have no prediction set "
                                "in common with the others (clsctl predict RUN DATA --name NAME)")
    else:
        orders = align_ids([(m.name, m.test) for m in members], "prediction")
        xt = extract_matrices(members, "test", orders, classes)
        scores_t, labels_t = combine(vote, xt, result.weights, n_classes)
        del xt
        if result.decision is not None and result.decision.offsets is not None:
            labels_t = result.decision.decide(log_probs(scores_t))
        ref_t = members[0].test
        paths = next((m.test["path"].tolist() for m in members
                      if "path" in m.test.columns and m.test["path"].notna().all()), None)
        result.test_ids = ref_t["id"].astype(str).tolist()
        result.test_scores, result.test_labels = scores_t, labels_t
        from toolkit.predict.submission import build_submission, read_sample

        sample = read_sample(sample_submission) if sample_submission is not None else None
        where = f"sample submission {sample_submission}" if sample_submission is not None else "submission"
        submission = build_submission(result.test_ids, paths, scores_t, classes, sample=sample, labels=labels_t,
                                      where=where)
        test_frame = probability_frame(result.test_ids, paths, {"label": scores_t}, {"label": classes})
        if result.prediction_set is None:
            result.prediction_set = "predictions"
    if write:
        _write(result, runs_root, name, oof_frame, test_frame, submission)
    return result


def _calibration_info(method: str | None, members: dict[str, Any], composed: dict[str, Any] | None
                      ) -> dict[str, Any] | None:
    if method is None:
        return None
    if composed is not None:
        return {"method": method, "where": "each part, before the product"}
    return {"method": method, "where": "each run member, before voting", "members": members}


def _decide(decide: str, method: str, choose: Any, x: list[np.ndarray], y: np.ndarray, folds: np.ndarray,
            scores: np.ndarray, weights: np.ndarray, vote: str, classes: list[str]) -> Decision:
    """Tune the decision on the vote's scores; the cross-fit also re-chooses fitted weights without each fold."""
    n_classes = len(classes)

    def fold_scores(held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        train = [xi[~held] for xi in x]
        w = choose(train, y[~held]) if method in ("fit", "greedy") else weights
        return (log_probs(combine(vote, train, w, n_classes)[0]),
                log_probs(combine(vote, [xi[held] for xi in x], w, n_classes)[0]))

    return tune_decisions(log_probs(scores), y, folds, classes, decide, fold_scores=fold_scores)


def _scores(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from toolkit.metrics import classification_metrics

    if pred.ndim == 2:  # clip away exact zeros a hard-vote member can bring, and renormalize
        pred = np.array(pred, dtype=np.float64)  # float32 members are scored as float64, like the vote; a copy
        np.clip(pred, 0.0, None, out=pred)
        sums = pred.sum(axis=1, keepdims=True)
        np.divide(pred, sums, out=pred, where=sums > 0)
        pred[sums[:, 0] <= 0] = 1.0 / pred.shape[1]
    return classification_metrics(y, pred, classes)


def _cv(y: np.ndarray, pred: np.ndarray, folds: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from toolkit.metrics import cv_summary

    per_fold = [_scores(y[folds == f], pred[folds == f], classes) for f in np.unique(folds)]
    return cv_summary(per_fold)


def _write(result: EnsembleResult, runs_root: str | Path | None, name: str | None, oof_frame: pd.DataFrame | None,
           test_frame: pd.DataFrame | None, submission: pd.DataFrame | None) -> None:
    from toolkit.store import RunStore

    parents = [r for m in result.members for r in ([m.run] if m.is_run else (m.parts or []))]
    run = RunStore(runs_root).create(
        "ensemble", name=name or "ensemble", parents=parents,
        extra={"vote": result.vote, "metric": result.metric, "weights_from": result.method,
               "members": [m.source for m in result.members]})
    with run.activate():
        if oof_frame is not None:
            result.files["oof"] = run.write_oof(oof_frame)
        if test_frame is not None:
            result.files.update(run.write_predictions(result.prediction_set, test_frame, submission,
                                                      result.prediction_info()))
        run.update_summary(result.summary())
        result.files["summary"] = run.summary_path
    result.run = run
