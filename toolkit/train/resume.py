"""What ``--resume`` reads from a run before it trains again: every fold's saved training state.

Accelerate loads a state with ``torch.load(weights_only=True)``, which refuses a pickle that would run
code, but it reports the refusal as a long ``UnpicklingError`` in the middle of a fold, after the run was
marked running, and it skips a random-state file it cannot load without a word. Checking the files first
turns the first into one line before anything changes and the second into a warning.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.errors import RunError
from toolkit.models import unreadable_weights
from toolkit.store import Run

# Accelerate's own names: it skips these when they cannot be loaded and training goes on without them.
_OPTIONAL = ("random_states_",)
# The suffixes of files Accelerate loads with torch.load or safetensors.
_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".safetensors")


def _fold_dirs(run: Run) -> list[tuple[int, Path]]:
    root = run.fold_dir(0).parent
    folds = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []
    return [(k, state) for k in folds if run.read_fold_done(k) is None and (state := run.fold_state_dir(k)) is not None]


def check_saved_states(run: Run) -> list[str]:
    """Check every unfinished fold's saved state of ``run`` without running anything in it.

    Returns:
        Warnings about files resume will go on without (a random-state file that cannot be loaded).

    Raises:
        RunError: A file resume needs (model, optimizer, scheduler, counters) cannot be loaded safely.
    """
    notes: list[str] = []
    for fold, state in _fold_dirs(run):
        for path in sorted(p for p in state.iterdir() if p.is_file()):
            where = f"folds/{fold}/{state.name}/{path.name}"
            if path.suffix == ".json":
                problem = _unreadable_json(path)
            elif path.suffix in _WEIGHTS:
                problem = unreadable_weights(path)
            else:
                continue
            if problem is None:
                continue
            if path.name.startswith(_OPTIONAL):
                notes.append(f"{where} not loaded: {problem}; fold {fold} resumes without it, so its random draws "
                             "may differ from an uninterrupted run")
                continue
            raise RunError(f"run {run.id}: {where} cannot be loaded: {problem}",
                           f"the saved state is damaged or was replaced, so fold {fold} cannot resume; start a new "
                           "run (the run is left as it was)")
    return notes


def _unreadable_json(path: Path) -> str | None:
    try:
        json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:
        return f"not JSON: {str(exc).splitlines()[0][:120]}"
    return None
