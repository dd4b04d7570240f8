"""The summary of a study: every trial with its state and score, the best one and what it changed, which
parameters mattered, and what pruning saved. It is the sweep run's ``summary.json``; the study page and
``clsctl report`` read it from there."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.config.loader import get_value
from toolkit.sweep.plan import SweepPlan

if TYPE_CHECKING:
    import optuna

_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _trial_row(trial: optuna.trial.FrozenTrial, plan: SweepPlan) -> dict[str, Any]:
    attrs = trial.user_attrs
    worker = attrs.get("worker") or {}
    start, end = trial.datetime_start, trial.datetime_complete
    run_path = attrs.get("run")
    return {
        "number": trial.number,
        "state": _STATES.get(trial.state.name, trial.state.name.lower()),
        "value": _finite(trial.value) if trial.values else None,
        "params": dict(trial.params),
        "run": Path(run_path).name if run_path else None,
        "run_path": run_path,
        "host": worker.get("host"),
        "started": start.isoformat(timespec="seconds") if start else None,
        "duration_s": round((end - start).total_seconds(), 1) if start and end else None,
        "retry_of": attrs.get("retry_of"),
        "baseline": bool(attrs.get("baseline")),
        "pruned_at": attrs.get("pruned_at"),
        "error": attrs.get("error"),
        "curve": [[int(step), _finite(v)] for step, v in sorted(trial.intermediate_values.items())],
    }


def _epochs_planned(plan: SweepPlan, params: dict[str, Any]) -> int:
    """Epochs a trial trains when it is not pruned (``all`` counts the recipe's folds; a fold column may differ)."""
    epochs = int(params.get("train.epochs", plan.base.train.epochs))
    spec = plan.folds.strip().lower()
    if spec == "all":
        return epochs * (1 if plan.base.split.holdout is not None else plan.base.split.folds)
    return epochs * len(spec.split(","))


def _pruning(rows: list[dict[str, Any]], plan: SweepPlan) -> dict[str, Any]:
    """Trials pruned, and the epochs (or folds) their pruning saved against training them to the end."""
    pruned = [r for r in rows if r["state"] == "pruned"]
    out: dict[str, Any] = {"pruned": len(pruned), "by": plan.recipe.sweep.pruner}
    if plan.report == "epochs":
        trained = sum(len(r["curve"]) for r in rows if r["state"] in ("complete", "pruned"))
        saved = 0
        for r in pruned:
            saved += max(0, _epochs_planned(plan, r["params"]) - len(r["curve"]))
        out.update(epochs_trained=trained, epochs_saved=saved)
    elif plan.report == "folds":
        out["folds_trained"] = sum(len(r["curve"]) for r in rows if r["state"] in ("complete", "pruned"))
    return out


def _importances(study: optuna.Study, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Optuna's parameter importances over the completed trials ({} when too few trials or values differ)."""
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if len(complete) < 2:
        return {}
    import optuna

    try:
        found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. every completed trial has the same values
        return {}
    return {key: round(float(v), 6) for key, v in found.items() if math.isfinite(v)}


def study_summary(study: optuna.Study, plan: SweepPlan, *, ran: list[int] = ()) -> dict[str, Any]:
    """What ``summary.json`` of a sweep run holds.

    Args:
        study: The study, as its storage has it now (every worker's trials).
        plan: The sweep's plan (base recipe, space, metric).
        ran: Trial numbers this invocation ran.
    """
    rows = [_trial_row(t, plan) for t in study.get_trials(deepcopy=False)]
    counts = {state: sum(r["state"] == state for r in rows) for state in _STATES.values()}
    scored = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    best = None
    if scored:
        sign = 1 if plan.direction == "maximize" else -1
        top = max(scored, key=lambda r: (sign * r["value"], -r["number"]))
        changes = [{"key": key, "base": get_value(plan.base, key), "value": value}
                   for key, value in top["params"].items() if get_value(plan.base, key) != value]
        best = {"number": top["number"], "value": top["value"], "params": top["params"], "run": top["run"],
                "host": top["host"], "changes": changes}
        base = [r for r in scored if r["baseline"]]
        if base:  # the hand-written recipe, trained under the same conditions as every trial
            best["baseline"] = {"number": base[0]["number"], "value": base[0]["value"],
                                "gain": top["value"] - base[0]["value"]}
    cfg = plan.recipe.sweep
    return {
        "study": plan.study, "metric": plan.metric, "direction": plan.direction, "sampler": cfg.sampler,
        "pruner": cfg.pruner, "folds": plan.folds, "target_trials": plan.trials,
        "space": {p.key: p.describe() for p in plan.params},
        "counts": counts, "best": best, "trials": rows, "ran_here": list(ran),
        "importances": _importances(study, rows), "pruning": _pruning(rows, plan),
    }
