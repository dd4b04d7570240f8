"""The trainer callback through which a trial reports to its study and is pruned.

Two ways of reporting, by pruner:

``epochs`` (median, hyperband)
    After every epoch the fold's score so far (the sweep metric at the fold's best epoch) at step
    ``position of the fold × epochs + epoch``: a trial whose epoch 1–2 fall behind the other trials' at
    the same step is stopped there.
``folds`` (Wilcoxon)
    After every fold its best score at step = the fold id, so the Wilcoxon signed-rank test pairs the
    folds of two trials; a trial is stopped once it is significantly worse than the best one.

A pruned trial stops its fold after the current epoch and leaves its later folds untrained; its run
finishes with what it has (``--resume`` trains the rest), and ``trial.json`` says it was pruned.

In a trial trained by several processes (``clsctl sweep --launch``), the main process alone reports and
asks the pruner; its answer is broadcast, so every process stops after the same epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from toolkit.train.callbacks import Callback

if TYPE_CHECKING:
    import optuna

    from toolkit.store import Run
    from toolkit.train.state import FoldState


class TrialReport(Callback):
    """Report a fold's progress to an Optuna trial and stop the run when the pruner says so.

    Args:
        trial: The running trial; None in the processes of a multi-process trial other than the main one,
            which follow the main one's decision.
        metric: The sweep metric (a key of the validation metrics).
        mode: ``epochs`` or ``folds`` (see the module docstring); None reports nothing and never prunes.
        epochs: Epochs per fold (``train.epochs`` of the trial's recipe), which spaces the steps of the folds.
        on_run: Called once with the run folder, when training starts (the trial records it).
    """

    def __init__(self, trial: optuna.Trial | None, metric: str, mode: str | None, epochs: int,
                 on_run: Callable[[Run], None] | None = None) -> None:
        self.trial, self.metric, self.mode, self.epochs, self.on_run = trial, metric, mode, epochs, on_run
        self.name = f"trial {trial.number}" if trial is not None else "trial"
        self.run: Run | None = None
        self.pruned: dict[str, Any] | None = None
        self.last: float | None = None
        self._fold_best: float | None = None
        self._position = 0

    def on_fold_start(self, trainer: Any, state: FoldState) -> None:
        if self.run is None:
            self.run = trainer.folder
            if self.on_run is not None and self.trial is not None:
                self.on_run(self.run)
        self._position = list(trainer.folds).index(state.fold) if state.fold in trainer.folds else 0
        # On resume the fold's earlier epochs are in its history: its best so far is the starting point.
        self._fold_best = None
        for row in state.history:
            if row.get("best") and isinstance(row.get(self.metric), int | float):
                self._fold_best = float(row[self.metric])

    def on_epoch_end(self, trainer: Any, state: FoldState, row: dict[str, Any], val: dict[str, Any]) -> None:
        value = val["metrics"].get(self.metric)
        numeric = isinstance(value, int | float)
        if numeric and (state.improved or self._fold_best is None):
            self._fold_best = float(value)
        if self.mode != "epochs":
            return
        step = self._position * self.epochs + state.epoch
        if numeric:
            self.last = self._fold_best
        if self._decide(trainer, self._fold_best if numeric else None, step):
            self._prune(trainer, state, step, state.epoch)

    def on_fold_end(self, trainer: Any, state: FoldState, result: dict[str, Any]) -> None:
        if self.mode != "folds" or self.pruned is not None:
            return
        value = (result.get("metrics") or {}).get(self.metric)
        numeric = isinstance(value, int | float)
        if numeric:
            self.last = float(value)
        if self._decide(trainer, float(value) if numeric else None, state.fold):
            self._prune(trainer, state, state.fold, None)

    def _decide(self, trainer: Any, value: float | None, step: int) -> bool:
        """Report ``value`` at ``step`` and ask the pruner (main process); every process gets its answer."""
        prune = False
        if self.trial is not None and value is not None:
            self.trial.report(value, step)
            prune = self.trial.should_prune()
        if trainer.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            # Every process calls this at the same hook, whatever its own metrics say: a process that
            # skipped it would leave the others waiting, and one that missed the decision trains on alone.
            decision = [prune]
            broadcast_object_list(decision)
            prune = bool(decision[0])
        return prune

    def _prune(self, trainer: Any, state: FoldState, step: int, epoch: int | None) -> None:
        state.should_stop = True
        trainer.stop_training = True
        self.pruned = {"fold": state.fold, "epoch": epoch, "step": step, "value": self.last}
        where = f"fold {state.fold}" + (f" epoch {epoch + 1}" if epoch is not None else "")
        score = f" ({self.metric} {self.last:.4f})" if self.last is not None else ""
        trainer.progress.log(f"{self.name}: pruned after {where}{score}: it falls behind the other trials")
