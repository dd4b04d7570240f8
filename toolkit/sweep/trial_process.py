"""The processes of one trial under ``clsctl sweep --launch`` (``-m toolkit sweep-trial SPEC``).

Every process the launcher starts trains the trial's recipe; the main one (rank 0) opens the study
through the storage in ``CLSCTL_SWEEP_STORAGE``, reports each epoch's score to the trial and asks the
pruner (the others follow its decision, see :class:`~toolkit.sweep.pruning.TrialReport`), records the
run folder on the trial, and writes how the trial ended to the result file the worker reads. The study
is told the trial's end by the worker alone, so a trial is never told twice.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import UsageError
from toolkit.progress import Progress
from toolkit.store.atomic import atomic_write_text
from toolkit.store.provenance import pid_alive
from toolkit.sweep.launch import ENV_STORAGE, ENV_WORKER, PROBE_MARK
from toolkit.sweep.plan import make_pruner
from toolkit.sweep.pruning import TrialReport
from toolkit.sweep.storage import open_storage

if TYPE_CHECKING:
    import optuna

    from toolkit.store import Run

# Seconds between two looks at whether the worker still runs.
_WATCH_EVERY = 2.0


def probe() -> None:
    """Say how many processes the launch started (main process only), and do nothing else."""
    if _is_main():
        print(PROBE_MARK + json.dumps({"world": int(os.environ.get("WORLD_SIZE", "1"))}), flush=True)


def run_trial(spec_path: str | os.PathLike[str], progress: Progress | bool | None = None) -> Run:
    """Train the trial that ``spec_path`` describes, in this process of its launch; return its run.

    Raises:
        UsageError: The spec or the trial cannot be used (the worker has gone, or the trial is not running).
        Whatever training raises; the main process writes it to the result file first.
    """
    from toolkit.config.loader import load_recipe
    from toolkit.train.api import train

    spec: dict[str, Any] = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    _watch_worker()
    main = _is_main()
    trial = _open_trial(spec) if main else None
    result_path = Path(spec["result"])

    def write(result: dict[str, Any]) -> None:
        if main:
            atomic_write_text(result_path, json.dumps(result))

    def started(run: Run) -> None:
        assert trial is not None  # TrialReport calls this in the main process only
        trial.set_user_attr("run", str(run.path))  # a retry after a lost worker continues this folder
        run.write_trial(spec["record"])
        write({"state": "running", "run": str(run.path)})

    reporter = TrialReport(trial, spec["metric"], spec["report"], spec["epochs"], on_run=started)
    recipe = load_recipe(spec["recipe"])
    try:
        trained = train(recipe, runs_root=spec["runs_root"], name=spec["name"], folds=spec["folds"],
                        resume=spec["resume"], callbacks=[reporter], progress=progress, parents=spec["parents"])
    except (KeyboardInterrupt, SystemExit):
        write({"state": "interrupted", "run": _path(reporter.run)})
        raise
    except Exception as exc:
        write({"state": "failed", "run": _path(reporter.run), "error": str(exc)})
        raise
    write({"state": "pruned" if reporter.pruned is not None else "complete", "run": str(trained.path),
           "pruned_at": reporter.pruned})
    return trained


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _path(run: Run | None) -> str | None:
    return str(run.path) if run is not None else None


def _open_trial(spec: dict[str, Any]) -> optuna.Trial:
    """The running trial of the worker's study, to report to; the pruner is the study's own."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = os.environ.get(ENV_STORAGE)
    if not storage:
        raise UsageError(f"{ENV_STORAGE} is not set", "sweep-trial runs under `clsctl sweep --launch` only")
    # The sampler draws nothing here (the worker drew the trial's values); a random one costs nothing to start.
    study = optuna.load_study(study_name=spec["study"], sampler=optuna.samplers.RandomSampler(),
                              pruner=make_pruner(spec["pruner"]),
                              storage=open_storage(storage, heartbeat=spec["heartbeat"], retries=spec["retries"]))
    number = spec["number"]
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found or found[0].state != optuna.trial.TrialState.RUNNING:
        state = found[0].state.name.lower() if found else "missing"
        raise UsageError(f"trial {number} of study {spec['study']} is {state}, not running",
                         "its worker stopped or lost its heartbeat; run clsctl sweep again")
    return optuna.trial.Trial(study, found[0]._trial_id)


def _watch_worker() -> None:
    """Stop this process (as a SIGTERM would) once the worker that started the trial is gone.

    A worker killed outright cannot pass a signal on; without this its trial would train on, holding the
    run folder the study's retry of the trial is meant to continue. Its death also closes the pipe this
    process's output goes to: the next log line would raise ``BrokenPipeError`` and mark the run failed
    instead of interrupted. So output is sent to the null device before the SIGTERM, and a pipe whose
    reader has gone is noticed at once (poll reports an error on the write end), not at the next look.
    """
    pid = int(os.environ.get(ENV_WORKER) or 0)
    if pid <= 0:
        return
    stopping = threading.Lock()

    def stop() -> None:
        if not stopping.acquire(blocking=False):
            return  # the other watcher is already stopping this process
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        while pid_alive(pid):
            time.sleep(_WATCH_EVERY)
        stop()

    def watch_pipe() -> None:
        poller = select.poll()
        poller.register(1, 0)  # no events asked for: poll returns only on error or hang-up
        while True:
            events = 0
            for _, event in poller.poll():
                events |= event
            if events & select.POLLNVAL:
                return  # fd 1 was closed here: nothing left to watch
            if events & (select.POLLERR | select.POLLHUP):
                stop()
                return

    threading.Thread(target=watch, name="clsctl-worker-watch", daemon=True).start()
    if stat.S_ISFIFO(os.fstat(1).st_mode):
        threading.Thread(target=watch_pipe, name="clsctl-output-watch", daemon=True).start()
