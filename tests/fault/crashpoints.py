"""Run ``clsctl`` in a child process with faults planted at chosen points: the tests' kill switch.

    python tests/fault/crashpoints.py '<plan as JSON>' train --recipe r.toml ...

The plan is a list of faults; each is a dict with ``at`` and its own keys:

``step``        ``fold``, ``epoch``, ``step``: after that batch (``epoch`` is the one in training, from 0).
``fold_end``    ``fold``: after the fold's ``done.json`` is written, before its state is removed.
``fold_start``  ``fold``: when the fold's state is built (the folds before it are finished).
``write``       ``path`` (a regex searched in the target's path), ``nth`` (default 1): half of the
                n-th matching atomic write reaches the temporary file.
``torch_save``  ``path``, ``nth``: half of the n-th matching ``torch.save`` (Accelerate's optimizer and
                RNG state) reaches the file.
``rename``      ``src``, ``dst`` (folder names), ``nth``: right after the n-th such rename.
``finish``      while ``run.json`` is rewritten to say ``finished`` (half of it reaches the temporary file).

Each fault does ``do``: ``kill`` (SIGKILL to itself, the default), or ``pause`` (print ``PAUSED`` on stdout
and sleep, for the test to send signals). A pause's ``slow_cleanup`` makes the way out after the first
signal take 60 s, swallowing further KeyboardInterrupts as a stuck loader-worker join does, and print
``CLEANING`` when it starts: ``"finally"`` in the training loop, ``"del"`` when the fold's objects are
freed with the traceback (where a DataLoader iterator shuts its workers down).

An entry without ``at``, ``{"clock": "2026-11-22T10:15:00"}``, pins the clock that names runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import toolkit.store.atomic as atomic
from toolkit.train.callbacks import Callback


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _slow_cleanup() -> None:
    print("CLEANING", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(0.05)


class _SlowJoin:
    """Freed with the fold's objects, it waits as a DataLoader iterator joining stuck workers does."""

    def __del__(self) -> None:
        _slow_cleanup()


def _pause(fault: dict[str, Any], state: Any) -> None:
    if fault.get("slow_cleanup") == "del":
        state.janitor = _SlowJoin()
    try:  # PAUSED inside the try: a signal right after it must still find the cleanup
        print("PAUSED", flush=True)
        time.sleep(60)
    finally:
        if fault.get("slow_cleanup") == "finally":
            _slow_cleanup()


def _act(fault: dict[str, Any], state: Any = None) -> None:
    if fault.get("do", "kill") == "pause":
        _pause(fault, state)
    else:
        _die()


class _Counter:
    def __init__(self) -> None:
        self.seen: dict[int, int] = {}

    def hit(self, index: int, fault: dict[str, Any]) -> bool:
        self.seen[index] = self.seen.get(index, 0) + 1
        return self.seen[index] == fault.get("nth", 1)


class Planted(Callback):
    """Acts at the hook-level faults of the plan."""

    def __init__(self, plan: list[dict[str, Any]]) -> None:
        self.plan = plan

    def on_fold_start(self, trainer, state):
        for fault in self.plan:
            if fault.get("at") == "fold_start" and fault["fold"] == state.fold:
                _act(fault)

    def on_step_end(self, trainer, state, updated):
        for fault in self.plan:
            if fault.get("at") == "step" and (fault["fold"], fault["epoch"], fault["step"]) == (
                    state.fold, state.epoch + 1, state.step):
                _act(fault, state)

    def on_fold_end(self, trainer, state, result):
        for fault in self.plan:
            if fault.get("at") == "fold_end" and fault["fold"] == state.fold:
                _act(fault)


class _Torn:
    """A file handle whose first write stops halfway, then kills the process."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def write(self, data: Any) -> int:
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        os.fsync(self.handle.fileno())
        _die()
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def install(plan: list[dict[str, Any]]) -> None:
    """Plant every fault of ``plan`` in this process."""
    import torch

    import toolkit.store.provenance as provenance
    import toolkit.train.trainer as trainer_mod
    from toolkit.store import Run

    counter = _Counter()
    finishing: list[bool] = [False]
    writes = [(i, f) for i, f in enumerate(plan) if f.get("at") in ("write", "finish")]
    real_writer = atomic.atomic_writer

    @contextlib.contextmanager
    def writer(path, mode="wb", **kwargs):
        with real_writer(path, mode, **kwargs) as handle:
            for index, fault in writes:
                if fault["at"] == "finish":
                    armed = finishing[0] and Path(path).name == "run.json"
                else:
                    armed = re.search(fault["path"], str(path)) is not None and counter.hit(index, fault)
                if armed:
                    yield _Torn(handle)
                    return
            yield handle

    atomic.atomic_writer = writer

    if any(f.get("at") == "finish" for f in plan):
        real_set_status = Run.set_status

        def set_status(self, status, error=None):
            finishing[0] = str(status) == "finished"
            return real_set_status(self, status, error)

        Run.set_status = set_status

    saves = [(i, f) for i, f in enumerate(plan) if f.get("at") == "torch_save"]
    if saves:
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            for index, fault in saves:
                if isinstance(f, str | os.PathLike) and re.search(fault["path"], str(f)) and counter.hit(index, fault):
                    buffer = io.BytesIO()
                    real_save(obj, buffer, *args, **kwargs)
                    data = buffer.getvalue()
                    with open(f, "wb") as out:
                        out.write(data[: len(data) // 2])
                        out.flush()
                        os.fsync(out.fileno())
                    _die()
            return real_save(obj, f, *args, **kwargs)

        torch.save = save

    renames = [(i, f) for i, f in enumerate(plan) if f.get("at") == "rename"]
    if renames:
        real_rename = Path.rename

        def rename(self, target):
            moved = real_rename(self, target)
            for index, fault in renames:
                if (self.name, Path(target).name) == (fault["src"], fault["dst"]) and counter.hit(index, fault):
                    _die()
            return moved

        Path.rename = rename

    for fault in plan:
        if "clock" in fault:
            pinned = dt.datetime.fromisoformat(fault["clock"]).replace(tzinfo=dt.UTC)
            provenance.utcnow = lambda pinned=pinned: pinned

    hooks = [f for f in plan if f.get("at") in ("step", "fold_end", "fold_start")]
    if hooks:
        real_defaults = trainer_mod.default_callbacks

        def default_callbacks(*args, **kwargs):
            return [*real_defaults(*args, **kwargs), Planted(plan)]

        trainer_mod.default_callbacks = default_callbacks


def main() -> int:
    """Install the plan in ``argv[1]`` and run ``clsctl`` with the rest of the arguments."""
    install(json.loads(sys.argv[1]))
    from toolkit.cli.main import run

    return run(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
