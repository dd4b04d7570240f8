"""A sweep study seeded so its second trial is pruned: one learning rate that learns, one that cannot."""

from __future__ import annotations

from pathlib import Path


def seeded_pruning_study(runs: Path, name: str) -> None:
    """Create study ``name`` in the default journal storage under ``runs``, its first two trials enqueued.

    Trial 0 (lr 3e-3) learns the colour images in an epoch; trial 1 (lr 1e-9) learns nothing, so it is
    behind trial 0 after its first epoch and a median pruner with one start-up trial cuts it there.
    """
    import optuna

    (runs / "studies").mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(runs / "studies" / f"{name}.journal"))
    study = optuna.create_study(storage=optuna.storages.JournalStorage(backend), study_name=name,
                                direction="maximize")
    study.enqueue_trial({"optim.lr": 3e-3})
    study.enqueue_trial({"optim.lr": 1e-9})
