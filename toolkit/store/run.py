"""Runs: one folder per run, and the folder is the whole record.

::

    runs/<YYYYmmdd-HHMMSS>-<slug>/
      run.json      id, kind, status, parents, times, git commit, versions, host, seed, data
      recipe.toml   the fully resolved recipe
      metrics.csv   one row per (fold, epoch)
      summary.json  headline numbers, merged in as they become known

Run ids
    ``<YYYYmmdd-HHMMSS>-<slug>``, the time in UTC (so ids sort by time whatever the machine's
    time zone or daylight saving) and the slug the sanitised run name, or the kind when there
    is no name. When that folder already exists (two runs started in the same second) a
    counter goes *between* time and slug: ``20261122-101500-2-baseline``,
    ``20261122-101500-3-baseline``... so an id always ends with ``-<slug>`` and
    ``runs/*-baseline`` finds every run named baseline. Folders are made with ``os.mkdir``,
    which fails if the folder exists, so ids are unique across processes without a lock.

Only the main process writes, every file is replaced atomically, and ``run.json`` is written
last when a run is created, so a folder without ``run.json`` is never taken for a run.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from toolkit.errors import RunError
from toolkit.store import provenance
from toolkit.store.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    temp_file_pid,
)
from toolkit.store.files import RunFiles
from toolkit.store.lock import folder_lock

__all__ = ["FORMAT_VERSION", "RUN_JSON", "Run", "RunStatus", "default_runs_root", "is_run_dir", "run_holding", "slugify"]

StrPath = str | os.PathLike[str]

RUN_JSON = "run.json"
# Major version of the run-folder layout, recorded in run.json. Readers refuse a newer major version
# (its files may mean something else); folders without the key were written before it existed (1).
FORMAT_VERSION = 1
_MAX_SLUG = 64


class RunStatus(enum.StrEnum):
    """Where a run is in its life. Compares equal to its plain string value."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


def default_runs_root() -> Path:
    """The runs folder: ``$CLSCTL_RUNS`` when set, else ``./runs``.

    Returns:
        The path (it may not exist yet).
    """
    return Path(os.path.expanduser(os.environ.get("CLSCTL_RUNS") or "runs"))


def is_run_dir(path: StrPath) -> bool:
    """Whether ``path`` is a run folder, i.e. a folder holding ``run.json``.

    Args:
        path: Any path.

    Returns:
        True for a run folder.
    """
    candidate = Path(path)
    return candidate.is_dir() and (candidate / RUN_JSON).is_file()


def run_holding(path: StrPath | None) -> Run | None:
    """The run whose folder holds the file ``path`` (a clean run's ``clean_manifest.csv``), or None.

    A run trained on such a file records that run as its parent, so the lineage source run → clean
    run → retrained run can be followed (``clsctl report`` sets a retrained run against its source).
    """
    if path is None:
        return None
    folder = Path(path).absolute().parent
    return Run(folder) if is_run_dir(folder) else None


def slugify(text: str) -> str:
    """Turn a run name into the part of a folder name after the time stamp.

    Letters, digits, ``.``, ``_`` and ``-`` are kept (case too); every other run of
    characters becomes one ``-``; leading/trailing separators are dropped; at most 64
    characters are kept.

    Args:
        text: A run name or kind.

    Returns:
        The slug; empty if nothing usable was left.
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    slug = re.sub(r"-{2,}", "-", slug).strip("-._")
    return slug[:_MAX_SLUG].rstrip("-._")


# --------------------------------------------------------------------------- one run


class Run(RunFiles):
    """One run folder.

    ``run.json`` is read lazily and cached; :meth:`refresh` re-reads it. Every write goes
    through the atomic helpers, so a crash never leaves a half-written file.

    Args:
        path: The run folder.

    Raises:
        RunError: If ``path`` is not a run folder.
    """

    def __init__(self, path: StrPath) -> None:
        folder = Path(path)
        if not is_run_dir(folder):
            raise RunError(f"{folder} is not a run folder (it has no {RUN_JSON})",
                           "pass a folder under the runs root, e.g. runs/<id>")
        self.path: Path = folder.absolute()
        self._info: dict[str, Any] | None = None
        self._active: list[contextlib.AbstractContextManager[Run]] = []
        self._signal: int | None = None
        self._handled: builtins.list[int] = []

    # ------------------------------------------------------------------ identity
    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def id(self) -> str:
        """The folder name, e.g. ``20261122-101500-baseline``."""
        return self.path.name

    # ------------------------------------------------------------------ run.json
    @property
    def info(self) -> dict[str, Any]:
        """The content of ``run.json`` (cached; see :meth:`refresh`)."""
        if self._info is None:
            self._info = self._load_info()
        return self._info

    def _load_info(self) -> dict[str, Any]:
        file = self.path / RUN_JSON
        try:
            data = read_json(file)
        except FileNotFoundError:
            raise RunError(f"{file} has disappeared", "the run folder was moved or deleted") from None
        except ValueError as exc:
            raise RunError(f"{file} is not valid JSON ({exc})",
                           "the run folder is damaged; delete it or restore run.json") from None
        if not isinstance(data, dict):
            raise RunError(f"{file} does not hold a JSON object", "the run folder is damaged")
        version = data.get("format_version", 1)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise RunError(f"run {self.path.name} was written by a newer clsctl (run format {version}; this "
                           f"release reads format {FORMAT_VERSION})", "upgrade clsctl to read it")
        return data

    def refresh(self) -> Run:
        """Re-read ``run.json`` from disk.

        Returns:
            This run, for chaining (``run.refresh().status``).
        """
        self._info = self._load_info()
        return self

    def update_info(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``run.json`` and rewrite it atomically.

        Args:
            **fields: Keys to set (a value of ``None`` is stored as ``null``).

        Returns:
            The new content of ``run.json``.
        """
        info = self._load_info()  # from disk, so another Run object's update is not lost
        info.update(fields)
        atomic_write_json(self.path / RUN_JSON, info)
        self._info = info
        return info

    @property
    def kind(self) -> str:
        """What made the run: ``train``, ``predict``, ``ensemble``..."""
        return str(self.info.get("kind", ""))

    @property
    def name(self) -> str | None:
        """The name given at creation, if any."""
        return self.info.get("name")

    @property
    def status(self) -> RunStatus:
        """The recorded status."""
        value = self.info.get("status")
        try:
            return RunStatus(value)
        except ValueError:
            raise RunError(f"{self.path / RUN_JSON} has an unknown status {value!r}",
                           f"expected one of {', '.join(s.value for s in RunStatus)}") from None

    @property
    def parents(self) -> builtins.list[str]:
        """Ids of the runs this one was made from."""
        return list(self.info.get("parents") or [])

    @property
    def started(self) -> str | None:
        """ISO-8601 UTC time the run was created."""
        return self.info.get("started")

    @property
    def ended(self) -> str | None:
        """ISO-8601 UTC time the run stopped, or ``None`` while running."""
        return self.info.get("ended")

    @property
    def error(self) -> str | None:
        """Why the run failed or was interrupted, if it did."""
        return self.info.get("error")

    @property
    def seed(self) -> int | None:
        """The seed recorded at creation."""
        return self.info.get("seed")

    @property
    def data_fingerprint(self) -> str | None:
        """The fingerprint of the data the run used."""
        return self.info.get("data_fingerprint")

    @property
    def stale(self) -> bool:
        """True when run.json says running but its process on this host is gone.

        That is what a ``kill -9`` or a power cut leaves behind: no handler got to record
        the end. A heuristic (pids are reused), and only checked on the same host.
        """
        info = self.info
        if info.get("status") != RunStatus.RUNNING or not isinstance(info.get("pid"), int):
            return False
        if (info.get("host") or {}).get("hostname") != socket.gethostname():
            return False
        return not provenance.pid_alive(info["pid"])

    # ------------------------------------------------------------------ files
    def file(self, name: StrPath) -> Path:
        """The path of a file inside the run folder (it need not exist).

        Args:
            name: A path relative to the run folder, e.g. ``"folds/0/best.safetensors"``.

        Returns:
            The absolute path.

        Raises:
            ValueError: If ``name`` is absolute or climbs out with ``..``.
        """
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"{name!s} is not a path inside the run folder")
        return self.path / rel

    def write_json(self, name: StrPath, obj: Any) -> Path:
        """Write ``obj`` as JSON to a file in the run folder, atomically.

        Args:
            name: File name relative to the run folder (sub-folders are created).
            obj: A JSON-like value (numpy values and paths are converted).

        Returns:
            The written path.
        """
        target = self.file(name)
        atomic_write_json(target, obj)
        return target

    def write_text(self, name: StrPath, text: str) -> Path:
        """Write a UTF-8 text file in the run folder, atomically.

        Args:
            name: File name relative to the run folder.
            text: Its content.

        Returns:
            The written path.
        """
        target = self.file(name)
        atomic_write_text(target, text)
        return target

    def write_bytes(self, name: StrPath, data: bytes) -> Path:
        """Write a binary file in the run folder, atomically.

        Args:
            name: File name relative to the run folder.
            data: Its content.

        Returns:
            The written path.
        """
        target = self.file(name)
        atomic_write_bytes(target, data)
        return target

    # ------------------------------------------------------------------ status
    def set_status(self, status: RunStatus | str, error: str | None = None) -> None:
        """Record a status; any status but ``running`` also records the end time.

        Args:
            status: One of :class:`RunStatus` (or its string value).
            error: Why the run failed or was interrupted; cleared when not given.

        Raises:
            ValueError: If ``status`` is not a known status.
        """
        status = RunStatus(status)
        if status is RunStatus.RUNNING:
            self.update_info(status=status.value, ended=None, duration_s=None, error=None)
            return
        now = provenance.utcnow()
        started = provenance.parse_iso(self._load_info().get("started"))
        duration = round((now - started).total_seconds(), 3) if started else None
        self.update_info(status=status.value, ended=provenance.iso(now), duration_s=duration, error=error)

    def finish(self) -> None:
        """Mark the run finished."""
        self.set_status(RunStatus.FINISHED)

    def fail(self, message: str) -> None:
        """Mark the run failed.

        Args:
            message: What went wrong, stored as ``error`` in run.json.
        """
        self.set_status(RunStatus.FAILED, error=message)

    @contextlib.contextmanager
    def activate(self) -> Iterator[Run]:
        """Mark the run running for the duration of a block, and record how it ended.

        Normal exit marks it finished (unless the block recorded another status itself); an
        exception marks it failed with ``"ExcType: message"`` and is re-raised;
        ``KeyboardInterrupt`` marks it interrupted. In the main thread, SIGINT and SIGTERM
        handlers are installed for the block (and the previous ones restored after): they
        mark the run interrupted at once, then raise ``KeyboardInterrupt`` (SIGINT) or
        ``SystemExit(128 + signum)`` (SIGTERM) so the program unwinds and stops. From then
        on until the block ends, a second SIGINT or SIGTERM ends the process at once (the
        signal's default action), however long the unwinding waits. A signal that was
        ignored (``SIG_IGN``, e.g. SIGINT for a ``nohup`` job) stays ignored.

        When an exception is already on its way out, a failure to record the end (a full disk
        cannot take run.json either) does not replace it: the run then stays ``running`` with a
        process that is gone, which :attr:`stale` recognises.

        Yields:
            This run.
        """
        self._signal = None
        self.set_status(RunStatus.RUNNING)
        restore = self._install_signal_handlers()
        try:
            yield self
        except KeyboardInterrupt:
            if self._signal is None:  # the handler has already recorded a signal
                self._record_end_quietly(RunStatus.INTERRUPTED, "KeyboardInterrupt")
            raise
        except SystemExit as exc:
            if self._signal is None:
                if exc.code in (None, 0):
                    self._record_end_quietly(RunStatus.FINISHED, None)
                else:
                    self._record_end_quietly(RunStatus.FAILED, f"SystemExit: {exc.code}")
            raise
        except BaseException as exc:
            self._record_end_quietly(RunStatus.FAILED, _describe(exc))
            raise
        else:
            self._record_end(RunStatus.FINISHED, None)
        finally:
            restore()

    def _record_end(self, status: RunStatus, error: str | None) -> None:
        # The block may have set its own final status (e.g. run.fail("diverged") and return);
        # only a run still marked running gets the automatic one.
        if self._load_info().get("status") == RunStatus.RUNNING:
            self.set_status(status, error)

    def _record_end_quietly(self, status: RunStatus, error: str | None) -> None:
        with contextlib.suppress(OSError):
            self._record_end(status, error)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum
        # The next SIGINT or SIGTERM takes the default action and ends the process at once: a user who
        # presses Ctrl-C twice wants out, even when the unwinding waits on loader workers or a device.
        for handled in self._handled:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(handled, signal.SIG_DFL)
        name = signal.Signals(signum).name
        # Recorded here, not only when the exception unwinds, because code in the block may
        # catch KeyboardInterrupt/SystemExit and the process may then die some other way.
        with contextlib.suppress(Exception):
            self.set_status(RunStatus.INTERRUPTED, error=f"interrupted by {name}")
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _install_signal_handlers(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signal.signal only works in the main thread
        previous: dict[int, Any] = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(signum)
            if old is signal.SIG_IGN:
                continue
            try:
                signal.signal(signum, self._on_signal)
            except (ValueError, OSError):  # e.g. a sub-interpreter
                continue
            previous[signum] = old
        self._handled = list(previous)

        def restore() -> None:
            self._handled = []
            for signum, old in previous.items():
                # None means a handler installed from C we cannot reinstate; default is closest.
                signal.signal(signum, old if old is not None else signal.SIG_DFL)

        return restore

    def remove_stale_temp_files(self) -> builtins.list[Path]:
        """Delete the temporary files that processes killed mid-write left in this run (outside ``predictions/``).

        Call it holding the run's lock: only a trainer writes there then. A file whose writer still
        runs on this machine is left alone.

        Returns:
            The files removed.
        """
        removed = []
        for folder, dirs, files in os.walk(self.path):
            if Path(folder) == self.path and "predictions" in dirs:
                dirs.remove("predictions")  # `clsctl predict` writes there without the run's lock
            for name in files:
                pid = temp_file_pid(name)
                if pid is not None and pid != os.getpid() and not provenance.pid_alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))
                        removed.append(Path(folder, name))
        return removed

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold this run's exclusive lock for a block: what a trainer does for as long as it trains.

        A second trainer (e.g. two ``clsctl train --resume`` of one run) is refused at once instead of
        writing every epoch twice. The lock goes with the process however it ends, so it is never stale.

        Raises:
            RunError: Another process holds the lock (its pid is named when known).
        """
        return folder_lock(self.path, f"run {self.id}")

    def __enter__(self) -> Run:
        manager = self.activate()
        self._active.append(manager)
        return manager.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._active.pop().__exit__(*exc_info)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


