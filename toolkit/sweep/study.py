"""``clsctl sweep``: an Optuna study whose trials are train runs.

One invocation is one worker: it opens (or joins) the study in its storage, makes a ``sweep`` run
folder that records it, and runs trials until the study has ``sweep.trials`` finished trials (counted
over every worker and every earlier invocation), its time budget is spent, or the grid is covered.
Each trial is a normal train run (``<study>-t<number>``) whose parent is the sweep run and whose
``recipe.toml`` is fully resolved; its ``trial.json`` says which trial it is and how it ended. At the end
the sweep run's ``summary.json`` describes the whole study and ``best.toml`` is the best trial's recipe.

A trial interrupted by Ctrl-C is queued again before the worker stops; a trial whose worker died (kill -9,
SIGTERM, a lost machine) is failed and queued again by the next trial any worker starts, or by the next
invocation (see :mod:`toolkit.sweep.storage`). Queued trials run even when the study has its
``sweep.trials``, so none is lost. A retry continues the same run folder from its last saved epoch when it
runs on the machine that has it.

With ``launch`` (``accelerate launch --multi_gpu …``) each trial is trained by the processes that command
starts, not in the worker; the worker still asks for the trials and tells the study how each ended (see
:mod:`toolkit.sweep.launch`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.config.schema import Recipe
from toolkit.errors import RecipeError, RunError, TrainingError, UsageError
from toolkit.progress import Progress, as_progress
from toolkit.store import Run, RunStatus, RunStore, default_runs_root, is_run_dir, slugify
from toolkit.sweep.launch import Launcher, check_launch, run_trial_processes
from toolkit.sweep.plan import SweepPlan, check_names, make_pruner, make_sampler, plan_sweep, pruner_settings
from toolkit.sweep.pruning import TrialReport
from toolkit.sweep.space import suggest, trial_recipe
from toolkit.sweep.storage import default_storage_path, describe_storage, open_storage
from toolkit.sweep.summary import study_summary

if TYPE_CHECKING:
    import optuna

# The study's user attribute that records what it was started with (SweepPlan.signature).
_SIGNATURE = "clsctl"
# Consecutive failed trials after which a worker stops instead of failing every trial the same way.
_MAX_FAILURES = 3


@dataclass
class SweepResult:
    """What a sweep invocation did.

    Attributes:
        run: The sweep run (``summary.json`` describes the whole study).
        plan: The checked plan.
        storage: Where the study lives (a database URL without its password, or the journal file).
        summary: The content of ``summary.json``.
        ran: The trial numbers this invocation ran.
        files: ``best`` (the best trial's recipe), when a trial has completed.
    """

    run: Run
    plan: SweepPlan
    storage: str
    summary: dict[str, Any]
    ran: list[int] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def run_sweep(recipe: Recipe, *, study: str | None = None, storage: str | os.PathLike[str] | None = None,
              trials: int | None = None, timeout: float | None = None, runs_root: str | os.PathLike[str] | None = None,
              progress: Progress | bool | None = None, launch: str | None = None) -> SweepResult:
    """Run (or join, or continue) the study of ``recipe``'s ``[sweep]`` section.

    Args:
        recipe: The recipe with a ``[sweep]`` section.
        study: The study's name (default the recipe's name, else ``sweep``); the same name continues it.
        storage: A database URL (``postgresql://…``) or a journal file path; default
            ``<runs>/studies/<study>.journal``.
        trials: Overrides ``sweep.trials`` (finished trials the study stops at).
        timeout: Overrides ``sweep.timeout`` (seconds this invocation starts trials for).
        runs_root: Folder of run folders (default ``$CLSCTL_RUNS`` or ``./runs``).
        progress: Where progress goes; None prints plain lines, False shows nothing.
        launch: A launcher each trial is trained under, e.g. ``accelerate launch --multi_gpu
            --num_processes 2`` (clsctl adds ``-m toolkit …``); None trains each trial in this process.

    Raises:
        RecipeError: The sweep or a value it can give a trial is invalid (before any trial).
        UsageError: The study was started with another space, metric or base recipe, the storage is
            unusable, or ``launch`` does not run.
        DataError: The data cannot be used (from the first trial).
    """
    plan = plan_sweep(recipe, study=study, trials=trials, timeout=timeout)
    launcher = check_launch(launch) if launch is not None else None
    check_names(plan)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep reports every trial in its own lines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    root = Path(runs_root) if runs_root is not None else default_runs_root()
    location = str(storage) if storage is not None else str(default_storage_path(root, slugify(plan.study)))
    shown = as_progress(progress)
    cfg = recipe.sweep
    opened = optuna.create_study(storage=open_storage(location, heartbeat=cfg.heartbeat, retries=cfg.retries),
                                 sampler=make_sampler(plan), pruner=make_pruner(plan), study_name=plan.study,
                                 direction=plan.direction, load_if_exists=True)
    _check_signature(opened, plan)
    opened.sampler = make_sampler(plan, existing=len(opened.get_trials(deepcopy=False)))
    baseline = _enqueue_baseline(opened, plan)
    described = describe_storage(location)
    run = RunStore(root).create("sweep", name=plan.study, recipe=recipe, seed=cfg.seed, extra={
        "study": plan.study, "storage": described, "sampler": cfg.sampler, "pruner": cfg.pruner,
        "metric": plan.metric, "direction": plan.direction,
        **({"launch": launcher.command, "trial_processes": launcher.processes} if launcher else {})})
    worker = _Worker(plan, opened, run, root, described, shown, launcher=launcher, location=location)
    with run.activate():
        optuna.storages.fail_stale_trials(opened)  # a dead worker's trial is queued again, and run below
        done = _finished(opened)
        shown.log(f"study {plan.study} ({described}): {done} finished trial(s); searching "
                  + ", ".join(f"{p.key} {p.describe()}" for p in plan.params))
        if baseline:
            shown.log(f"the first trial is the recipe's own values ({baseline})")
        if launcher is not None:
            shown.log(f"each trial runs as {launcher.processes} process(es): {launcher.command}")
        if plan.trials is not None and done >= plan.trials and not _waiting(opened):
            shown.log(f"study {plan.study} already has {done} finished trial(s) (sweep.trials = {plan.trials}): "
                      "nothing to run; pass --trials N to run more")
        else:
            try:
                opened.optimize(worker, timeout=plan.timeout, callbacks=[worker.after_trial],
                                catch=(TrainingError, RecipeError), gc_after_trial=True)
            except SystemExit as exc:
                # The trial's run took the SIGTERM: the sweep run is interrupted too, not failed.
                if exc.code == 128 + signal.SIGTERM and run.refresh().status is RunStatus.RUNNING:
                    run.set_status(RunStatus.INTERRUPTED, "interrupted by SIGTERM")
                raise
        summary = study_summary(opened, plan, ran=worker.ran)
        run.update_summary(summary)
        files = {}
        if summary.get("best") is not None:
            best = trial_recipe(plan.base, summary["best"]["params"])
            files["best"] = run.write_best_recipe(best.to_toml())
    return SweepResult(run=run, plan=plan, storage=described, summary=summary, ran=worker.ran, files=files)


def _enqueue_baseline(study: optuna.Study, plan: SweepPlan) -> str | None:
    """Queue the base recipe's own values as a new study's first trial; say why not, or None when not asked."""
    from toolkit.config.loader import get_value

    if not plan.recipe.sweep.baseline or plan.grid or study.get_trials(deepcopy=False):
        return None  # the grid sampler would try that point again: it only counts the points it drew itself
    values = {p.key: get_value(plan.base, p.key) for p in plan.params}
    if not all(p.holds(values[p.key]) for p in plan.params):
        return None
    study.enqueue_trial(values, user_attrs={"baseline": True})
    return ", ".join(f"{k}={_short(v)}" for k, v in values.items())


def _finished(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _waiting(study: optuna.Study) -> int:
    """Queued trials (retries of dead or interrupted trials, enqueued points): run even past ``sweep.trials``."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _check_signature(study: optuna.Study, plan: SweepPlan) -> None:
    """A study continues only with what it was started with; a new study records it."""
    mine = json.loads(json.dumps(plan.signature()))  # as the storage gives it back (lists, not tuples)
    from optuna.trial import TrialState

    recorded = study.user_attrs.get(_SIGNATURE)
    if recorded is None:
        # Queued points (Optuna's enqueue_trial: a known good recipe to try first) are welcome; results are not.
        if any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)):
            raise UsageError(f"study {plan.study} already has trials that clsctl did not make",
                             "pass --study NEW_NAME for a new study")
        study.set_user_attr(_SIGNATURE, mine)
        return
    differs = [key for key in mine if recorded.get(key) != mine[key]]
    if differs:
        what = {"space": "search space", "base": "base recipe (outside [sweep])", "grid": "sampler (grid or not)"}
        named = ", ".join(what.get(k, k) for k in differs)
        raise UsageError(f"study {plan.study} was started with another {named}; its trials would not compare",
                         "pass --study NEW_NAME for a new study, or restore the recipe it was started with")


class _Worker:
    """The objective of one worker: each call trains one trial's run and returns its score."""

    def __init__(self, plan: SweepPlan, study: optuna.Study, run: Run, root: Path, storage: str,
                 progress: Progress, launcher: Launcher | None = None, location: str | None = None) -> None:
        self.plan, self.study, self.run, self.root, self.storage, self.progress = plan, study, run, root, storage, progress
        self.launcher, self.location = launcher, location
        self.ran: list[int] = []
        self.failures = 0

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        plan = self.plan
        inherited = dict(trial.user_attrs)  # a retried trial carries the attributes of the one it retries
        values = suggest(trial, plan.params, grid=plan.grid)
        retry_of = inherited.get("number")
        trial.set_user_attr("number", trial.number)
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(), "sweep_run": self.run.id})
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
        self.ran.append(trial.number)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        self.progress.log(f"trial {trial.number}: {shown}" + (f" (retry of trial {retry_of})" if retry_of is not None else ""))
        recipe = trial_recipe(plan.base, values)
        record = {"study": plan.study, "storage": self.storage, "number": trial.number, "params": values,
                  "metric": plan.metric, "direction": plan.direction, "sweep_run": self.run.id, "state": "running",
                  "retry_of": retry_of}
        try:
            from toolkit.train.validate import check_recipe

            check_recipe(recipe)  # values drawn together may break a rule between keys
        except RecipeError as exc:
            trial.set_user_attr("error", str(exc))
            self.progress.log(f"trial {trial.number}: not trained: {exc}")
            raise

        def started(run: Run) -> None:
            trial.set_user_attr("run", str(run.path))
            run.write_trial(record)

        reporter = TrialReport(trial, plan.metric, plan.report, recipe.train.epochs, on_run=started)
        resume = _resumable(inherited)
        if resume is not None:
            self.progress.log(f"trial {trial.number}: continues run {resume.id}")
        try:
            if resume is not None and _all_folds_done(resume):
                trained, pruned = resume, None  # its worker died after training, before telling the study
                started(trained)
            elif self.launcher is not None:
                trained, pruned = self._launched(trial, recipe, record, resume)
            else:
                from toolkit.train.api import train

                trained = train(recipe, runs_root=self.root, name=f"{plan.study}-t{trial.number}",
                                folds=None if resume is not None else plan.folds, resume=resume,
                                callbacks=[reporter], progress=self.progress, parents=[self.run.id])
                pruned = reporter.pruned
        except (KeyboardInterrupt, SystemExit) as exc:
            attrs = self._stored_attrs(trial)
            if isinstance(exc, KeyboardInterrupt):
                # Optuna records it failed; a copy is queued with the run folder, so the next invocation
                # continues it from its last epoch. (SIGTERM leaves it running: the heartbeat check retries it.)
                trial.set_user_attr("interrupted", True)
                self.study.enqueue_trial(values, user_attrs={**attrs, "interrupted": True})
            self._record(attrs.get("run"), record, "interrupted", error="interrupted")
            # Not the trainer's `clsctl train --resume`: that would finish the run outside the study.
            exc.__notes__ = [f"run the same clsctl sweep again: it continues study {plan.study}, and trial "
                             f"{trial.number} in its run folder"]
            raise
        except Exception as exc:
            trial.set_user_attr("error", str(exc))
            self._record(self._stored_attrs(trial).get("run"), record, "failed", error=str(exc))
            raise
        if pruned is not None:
            trial.set_user_attr("pruned_at", pruned)
            trained.write_trial({**record, "state": "pruned", "pruned_at": pruned})
            raise optuna.TrialPruned(f"pruned at step {pruned['step']}")
        value = _score(trained, plan.metric)
        trained.write_trial({**record, "state": "complete", "value": value})
        self.progress.log(f"trial {trial.number}: {plan.metric} {value:.4f} ({trained.id})")
        return value

    def _launched(self, trial: optuna.Trial, recipe: Recipe, record: dict[str, Any],
                  resume: Run | None) -> tuple[Run, dict[str, Any] | None]:
        """Train the trial under the launcher: its run, and where it was pruned (None if it was not)."""
        plan, cfg = self.plan, self.plan.recipe.sweep
        assert self.launcher is not None and self.location is not None
        spec = {"study": plan.study, "number": trial.number, "recipe": recipe.to_toml(), "runs_root": str(self.root),
                "name": f"{plan.study}-t{trial.number}", "folds": None if resume is not None else plan.folds,
                "resume": str(resume.path) if resume is not None else None, "parents": [self.run.id],
                "metric": plan.metric, "report": plan.report, "epochs": recipe.train.epochs,
                "pruner": pruner_settings(plan), "record": record, "heartbeat": cfg.heartbeat, "retries": cfg.retries}
        result = run_trial_processes(self.launcher, spec, self.location, on_line=self.progress.log)
        if result.get("run"):
            trial.set_user_attr("run", result["run"])  # the trial's processes recorded it in the storage too
        if result["state"] == "interrupted":
            raise TrainingError("the trial's processes were stopped by a signal the worker did not send",
                                "see the trial's run folder")
        if result["state"] == "failed":
            raise TrainingError(str(result.get("error") or "the trial's processes failed"))
        return Run(result["run"]), result.get("pruned_at")

    def _stored_attrs(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's attributes as stored: what this process set, and what the trial's own processes did."""
        try:
            stored = [t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number]
        except Exception:  # the storage itself may be what failed the trial: its error is the one to show
            stored = []
        return {**(stored[0].user_attrs if stored else {}), **trial.user_attrs}

    def _record(self, run: str | None, record: dict[str, Any], state: str, error: str) -> None:
        if run is not None and is_run_dir(run):
            # The trial's end is in the study and in run.json; a full disk must not hide the real error.
            with contextlib.suppress(OSError, RunError):
                Run(run).write_trial({**record, "state": state, "error": error})

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Stop at ``sweep.trials`` finished trials, or after repeated failures of this worker."""
        from optuna.trial import TrialState

        if trial.state == TrialState.FAIL:
            self.failures += 1
            self.progress.log(f"trial {trial.number}: failed: {trial.user_attrs.get('error', 'see its run folder')}")
        else:
            self.failures = 0
        if self.failures >= _MAX_FAILURES:
            self.progress.log(f"{self.failures} trials in a row failed: this worker stops (see the trials' run folders)")
            study.stop()
        elif self.plan.trials is not None and _finished(study) >= self.plan.trials:
            import optuna

            optuna.storages.fail_stale_trials(study)  # a trial a dead worker left is retried before the end
            if not _waiting(study):
                study.stop()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _score(run: Run, metric: str) -> float:
    """A trial's value: its CV mean of ``metric`` over the folds it trained."""
    cv = (run.summary.get("cv") or {}).get(metric)
    if not isinstance(cv, dict) or not isinstance(cv.get("mean"), int | float):
        raise TrainingError(f"trial run {run.id} has no {metric} in its summary", "see its metrics.csv and run.json")
    return float(cv["mean"])


def _resumable(inherited: dict[str, Any]) -> Run | None:
    """The run folder of the trial a retry repeats, when it is on this machine and no process trains it."""
    path, worker = inherited.get("run"), inherited.get("worker") or {}
    if not path or worker.get("host") != socket.gethostname() or not is_run_dir(path):
        return None
    try:
        run = Run(path)
        if run.kind != "train" or (run.status is RunStatus.RUNNING and not run.stale):
            return None
    except (RunError, OSError, ValueError):
        return None
    return run


def _all_folds_done(run: Run) -> bool:
    folds = run.info.get("folds") or []
    return run.status is RunStatus.FINISHED and bool(folds) and all(run.read_fold_done(k) for k in folds)

