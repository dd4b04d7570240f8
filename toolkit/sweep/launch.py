"""Trials trained by several processes: ``clsctl sweep --launch "accelerate launch --multi_gpu …"``.

The worker keeps the study: it asks Optuna for a trial, writes the trial's resolved recipe and what the
trial's processes need to know, and starts ``<launch> -m toolkit sweep-trial SPEC`` (see
:mod:`toolkit.sweep.trial_process`). Their main process reports each epoch's score to the same trial
through the storage and asks the pruner; the worker reads how the trial ended from the result file and
the exit status, and tells the study once, as for a trial it trained itself.

While the trial's processes run, the worker's heartbeat goes on as for any trial. When the worker stops
(Ctrl-C, SIGTERM) it passes the signal on to them and waits for them to record the run's end; when it is
killed outright they notice its absence within seconds and stop (see ``ENV_WORKER``), and the study
retries the trial when its heartbeat is missed.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import UsageError

#: The storage URL for the trial's processes (in the environment: a database URL may hold a password).
ENV_STORAGE = "CLSCTL_SWEEP_STORAGE"
#: The worker's process id: the trial's processes stop when it is gone.
ENV_WORKER = "CLSCTL_SWEEP_WORKER"
#: The line prefix through which the probe says how many processes a launch starts.
PROBE_MARK = "clsctl-sweep-probe:"
# Seconds the trial's processes get to record an interrupted run before they are killed.
_GRACE = 60
# Seconds a launch may take to start its processes and answer the probe.
_PROBE_TIMEOUT = 300


@dataclass(frozen=True)
class Launcher:
    """A checked ``--launch`` command.

    Attributes:
        command: As the user gave it.
        argv: What runs, before ``-m toolkit …`` (``accelerate launch`` is this Python's accelerate).
        processes: The processes each trial runs as, as the probe found.
    """

    command: str
    argv: list[str]
    processes: int


def parse_launch(command: str) -> list[str]:
    """The launcher's arguments, without running anything.

    Raises:
        UsageError: It does not parse, names a program that is not installed, or already names what to run.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"--launch {command!r}: {exc}", 'quote it whole, e.g. --launch "accelerate launch '
                         '--multi_gpu --num_processes 2"') from None
    if not argv:
        raise UsageError("--launch is empty", 'e.g. --launch "accelerate launch --multi_gpu --num_processes 2"')
    if "-m" in argv or any(a.endswith(".py") or a in ("toolkit", "clsctl") for a in argv[1:]):
        raise UsageError(f"--launch {command!r} names what to run; clsctl adds `-m toolkit …` itself",
                         'give the launcher and its options only, e.g. "accelerate launch --num_processes 2"')
    if argv[:2] == ["accelerate", "launch"]:
        # The trial's processes must run this clsctl, from the environment the worker runs in.
        return [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]]
    if shutil.which(argv[0]) is None:
        raise UsageError(f"--launch {command!r}: `{argv[0]}` is not a command on PATH",
                         'e.g. --launch "accelerate launch --multi_gpu --num_processes 2"')
    return argv


def check_launch(command: str, env: dict[str, str] | None = None) -> Launcher:
    """Parse ``command`` and start it once with a probe that does nothing, before any trial.

    Raises:
        UsageError: The command is unusable, or the probe did not run (with the launcher's last error line).
    """
    argv = parse_launch(command)
    try:
        done = subprocess.run([*argv, "-m", "toolkit", "sweep-trial", "--probe"], env=env, capture_output=True,
                              text=True, timeout=_PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UsageError(f"--launch {command!r}: its processes did not start within {_PROBE_TIMEOUT} s",
                         f"try it alone to see where it waits: {command} -m toolkit --version") from None
    except OSError as exc:
        raise UsageError(f"--launch {command!r}: {exc.strerror or exc}", "check the command") from None
    found = [line[len(PROBE_MARK):] for line in done.stdout.splitlines() if line.startswith(PROBE_MARK)]
    if done.returncode != 0 or not found:
        said = last_error_line((done.stderr + "\n" + done.stdout).splitlines()) or f"exit status {done.returncode}"
        raise UsageError(f"--launch {command!r} does not run: {said}",
                         f"try it alone: {command} -m toolkit --version")
    return Launcher(command=command, argv=argv, processes=int(json.loads(found[0])["world"]))


def last_error_line(lines: list[str]) -> str | None:
    """The line that best says why a process failed: the last error line, else the last line with words."""
    said = [line.strip() for line in lines if re.search(r"[A-Za-z]", line)]
    for line in reversed(said[-200:]):
        if line.startswith("error:") or re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line):
            return line
    return said[-1] if said else None


def run_trial_processes(launcher: Launcher, spec: dict[str, Any], storage: str,
                        on_line: Callable[[str], None]) -> dict[str, Any]:
    """Train one trial with ``launcher``; return how it ended.

    Args:
        launcher: The checked launch command.
        spec: What :func:`toolkit.sweep.trial_process.run_trial` needs; ``recipe`` is the trial's recipe text.
        storage: The study's storage (URL or journal path), passed in the environment.
        on_line: Called with each line the processes print.

    Returns:
        The result the main process wrote (``state``: ``complete``, ``pruned``, ``failed`` or
        ``interrupted``; ``run``; ``pruned_at``; ``error``), with ``returncode``; ``state`` is ``failed`` with
        the processes' last error line when they exited otherwise than cleanly.
    """
    with tempfile.TemporaryDirectory(prefix="clsctl-trial-") as folder:
        work = Path(folder)
        (work / "recipe.toml").write_text(spec["recipe"], encoding="utf-8")
        result_path = work / "result.json"
        (work / "spec.json").write_text(json.dumps({**spec, "recipe": str(work / "recipe.toml"),
                                                    "result": str(result_path)}), encoding="utf-8")
        env = {**os.environ, ENV_STORAGE: storage, ENV_WORKER: str(os.getpid())}
        tail: collections.deque[str] = collections.deque(maxlen=200)
        # A session of its own: the worker decides what a Ctrl-C means for the trial and passes it on.
        proc = subprocess.Popen([*launcher.argv, "-m", "toolkit", "sweep-trial", str(work / "spec.json")], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                if line.strip():
                    on_line(line)
            proc.wait()
        except BaseException as exc:
            _stop(proc, signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
            raise
        finally:
            if proc.poll() is None:
                _stop(proc, signal.SIGTERM)
        result = _read(result_path)
    result["returncode"] = proc.returncode
    if proc.returncode != 0 and result.get("state") not in ("failed", "interrupted"):
        said = last_error_line(list(tail)) or f"the trial's processes exited with status {proc.returncode}"
        result.update(state="failed", error=said)
    elif proc.returncode == 0 and result.get("state") not in ("complete", "pruned"):
        result.update(state="failed", error="the trial's processes ended without a result")
    return result


def _read(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    """Pass ``sig`` to the trial's processes, give them time to record the run's end, then kill them."""
    for current in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, current)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue
