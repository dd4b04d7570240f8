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
import csv
import datetime as _dt
import enum
import functools
import glob
import itertools
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from toolkit.errors import RunError
from toolkit.store.atomic import (
    append_csv_row,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "RUN_JSON",
    "Run",
    "RunStatus",
    "RunStore",
    "default_runs_root",
    "is_run_dir",
    "resolve_runs",
    "slugify",
]

StrPath = str | os.PathLike[str]

RUN_JSON = "run.json"
RECIPE_TOML = "recipe.toml"
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"

_STAMP_FORMAT = "%Y%m%d-%H%M%S"
_STAMP_LEN = len("20260101-000000")
_MAX_SLUG = 64
_MAX_SAME_SECOND = 10_000
_SHOWN = 10
_GIT_TIMEOUT_S = 3.0

# Distributions recorded in run.json; looked up with importlib.metadata so none is imported.
_VERSIONED = ("torch", "timm", "torchvision", "albumentations", "accelerate", "numpy", "pandas",
              "scikit-learn", "cleanlab")

# Keys RunStore.create owns; ``extra`` may not overwrite them.
_RESERVED = frozenset({
    "id", "kind", "name", "status", "parents", "started", "ended", "duration_s", "error",
    "git_commit", "git_dirty", "versions", "host", "seed", "data_fingerprint", "pid", "argv", "cwd",
})


class RunStatus(enum.StrEnum):
    """Where a run is in its life. Compares equal to its plain string value."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


def _utcnow() -> _dt.datetime:
    # One seam for the clock: tests pin it to force same-second id collisions.
    return _dt.datetime.now(_dt.UTC)


def _iso(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_iso(text: Any) -> _dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


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


# --------------------------------------------------------------------------- provenance


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None  # no git installed, or a repository too slow to ask


def _git_state() -> tuple[str | None, bool | None]:
    head = _git("rev-parse", "--verify", "--quiet", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None, None
    # --no-optional-locks: plain `git status` may rewrite the index, which must not happen
    # behind the back of someone working in the same checkout.
    status = _git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return head.stdout.strip(), dirty


@functools.cache
def _versions() -> dict[str, str]:
    import importlib.metadata  # here, not at the top: it is slow to import and only needed here

    found = {"python": platform.python_version()}
    own = getattr(sys.modules.get("toolkit"), "__version__", None)
    if own is None:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            own = importlib.metadata.version("clsctl")
    if own is not None:
        found["clsctl"] = str(own)
    for dist in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


@functools.cache
def _host() -> dict[str, str]:
    return {"hostname": socket.gethostname(), "platform": platform.platform()}


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- one run


class Run:
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
        return not _pid_alive(info["pid"])

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

    @property
    def recipe_text(self) -> str | None:
        """The content of ``recipe.toml``, or ``None`` if the run has none."""
        try:
            return self.file(RECIPE_TOML).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ metrics & summary
    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row (typically one fold/epoch) to ``metrics.csv``.

        Args:
            row: Column name to value; new columns widen the file (see ``append_csv_row``).
        """
        append_csv_row(self.file(METRICS_CSV), row)

    def read_metrics(self, *, as_frame: bool | None = None) -> pd.DataFrame | builtins.list[dict[str, Any]]:
        """Read ``metrics.csv``.

        Args:
            as_frame: ``True`` for a pandas DataFrame, ``False`` for a list of dicts (numbers
                parsed, empty cells ``None``); ``None`` picks the DataFrame when pandas is
                importable.

        Returns:
            The rows; empty when the run has logged no metrics yet.
        """
        file = self.file(METRICS_CSV)
        if as_frame is None:
            try:
                import pandas  # noqa: F401  (only probing whether it is there)
            except ImportError:
                as_frame = False
            else:
                as_frame = True
        if as_frame:
            import pandas as pd

            if not file.exists() or file.stat().st_size == 0:
                return pd.DataFrame()
            return pd.read_csv(file)
        if not file.exists():
            return []
        with open(file, encoding="utf-8", newline="") as handle:
            return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(handle)]

    @property
    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json`` (empty dict when there is none yet)."""
        try:
            data = read_json(self.file(SUMMARY_JSON))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def update_summary(self, values: Mapping[str, Any] | None = None, /, **fields: Any) -> dict[str, Any]:
        """Merge keys into ``summary.json`` and rewrite it atomically.

        Args:
            values: Keys to set, as a mapping (for keys that are not identifiers).
            **fields: More keys to set.

        Returns:
            The merged summary.
        """
        merged = self.summary
        merged.update(values or {})
        merged.update(fields)
        atomic_write_json(self.file(SUMMARY_JSON), merged)
        return merged

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
        now = _utcnow()
        started = _parse_iso(self._load_info().get("started"))
        duration = round((now - started).total_seconds(), 3) if started else None
        self.update_info(status=status.value, ended=_iso(now), duration_s=duration, error=error)

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
        ``SystemExit(128 + signum)`` (SIGTERM) so the program unwinds and stops. A signal
        that was ignored (``SIG_IGN``, e.g. SIGINT for a ``nohup`` job) stays ignored.

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
                self._record_end(RunStatus.INTERRUPTED, "KeyboardInterrupt")
            raise
        except SystemExit as exc:
            if self._signal is None:
                if exc.code in (None, 0):
                    self._record_end(RunStatus.FINISHED, None)
                else:
                    self._record_end(RunStatus.FAILED, f"SystemExit: {exc.code}")
            raise
        except BaseException as exc:
            self._record_end(RunStatus.FAILED, _describe(exc))
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

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum
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

        def restore() -> None:
            for signum, old in previous.items():
                # None means a handler installed from C we cannot reinstate; default is closest.
                signal.signal(signum, old if old is not None else signal.SIG_DFL)

        return restore

    def __enter__(self) -> Run:
        manager = self.activate()
        self._active.append(manager)
        return manager.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._active.pop().__exit__(*exc_info)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse_cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _sort_key(run: Run) -> tuple[str, str, str]:
    # Time stamp first, then the millisecond start time, which orders runs that collided in
    # the same second (their counters would sort "2-x" before "x" as text).
    try:
        started = str(run.info.get("started") or "")
    except RunError:
        started = ""
    return run.id[:_STAMP_LEN], started, run.id


# --------------------------------------------------------------------------- the store


class RunStore:
    """The runs folder: creates, finds and lists runs.

    Args:
        root: The runs folder; :func:`default_runs_root` when ``None``. It is created on the
            first :meth:`create`.
    """

    def __init__(self, root: StrPath | None = None) -> None:
        self.root: Path = Path(root) if root is not None else default_runs_root()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def create(
        self,
        kind: str,
        name: str | None = None,
        recipe: Any = None,
        parents: Sequence[str | os.PathLike[str] | Run] = (),
        seed: int | None = None,
        data_fingerprint: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Run:
        """Make a new run folder with ``run.json`` (status ``running``) and ``recipe.toml``.

        Args:
            kind: What makes the run (``train``, ``predict``...).
            name: A human name; its slug ends the folder name. The kind is used when absent.
            recipe: ``None``, TOML text, or an object with a ``to_toml() -> str`` method.
            parents: Runs this one is built from (``Run`` objects, ids or folder paths).
            seed: The random seed.
            data_fingerprint: See :func:`toolkit.store.fingerprint.data_fingerprint`.
            extra: More top-level keys for run.json.

        Returns:
            The new run.

        Raises:
            RunError: If ``name``/``kind`` leave no usable folder name, or ``extra``
                tries to overwrite a key the store owns.
            TypeError: If ``recipe`` is neither text nor has ``to_toml``.
        """
        slug = slugify(name) if name is not None else slugify(kind)
        if not slug:
            raise RunError(f"run name {name if name is not None else kind!r} has no usable characters",
                           "use letters, digits, '-', '_' or '.'")
        clash = sorted(_RESERVED.intersection(extra or {}))
        if clash:
            raise RunError(f"extra run.json keys {', '.join(clash)} are reserved", "rename them")
        recipe_text = _recipe_text(recipe)  # before the folder exists: a bad recipe leaves nothing
        now = _utcnow()
        folder = self._make_folder(now, slug)
        try:
            if recipe_text is not None:
                atomic_write_text(folder / RECIPE_TOML, recipe_text)
            commit, dirty = _git_state()
            info: dict[str, Any] = {
                "id": folder.name,
                "kind": kind,
                "name": name,
                "status": RunStatus.RUNNING.value,
                "parents": [_parent_id(p) for p in parents],
                "started": _iso(now),
                "ended": None,
                "duration_s": None,
                "error": None,
                "git_commit": commit,
                "git_dirty": dirty,
                "versions": _versions(),
                "host": _host(),
                "seed": seed,
                "data_fingerprint": data_fingerprint,
                "pid": os.getpid(),
                "argv": list(sys.argv),
                "cwd": os.getcwd(),
                **dict(extra or {}),
            }
            # Written last: until run.json exists the folder is not a run to any reader.
            atomic_write_json(folder / RUN_JSON, info)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Run(folder)

    def _make_folder(self, now: _dt.datetime, slug: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = now.astimezone(_dt.UTC).strftime(_STAMP_FORMAT)
        for counter in itertools.count(1):
            if counter > _MAX_SAME_SECOND:
                break
            run_id = f"{stamp}-{slug}" if counter == 1 else f"{stamp}-{counter}-{slug}"
            folder = self.root / run_id
            try:
                os.mkdir(folder)  # atomic and exclusive: the loser of a race moves on
            except FileExistsError:
                continue
            return folder
        raise RunError(f"too many runs named {slug!r} started in the same second under {self.root}",
                       "wait a second, or give the runs different names")

    def _run_dirs(self) -> builtins.list[Path]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [Path(e.path) for e in entries if e.is_dir() and (Path(e.path) / RUN_JSON).is_file()]

    def open(self, ref: StrPath | Run) -> Run:
        """Find one run by folder path, id, or unique name suffix.

        Tried in order: ``ref`` as a path to a run folder; ``ref`` as an id under the root;
        ``ref`` as the end of an id (``baseline`` matches ``*-baseline``).

        Args:
            ref: A folder path, an id, or a suffix (a ``Run`` is returned as is).

        Returns:
            The run.

        Raises:
            RunError: If nothing matches, if ``ref`` is a folder without ``run.json``, or if
                a suffix matches several runs (they are listed).
        """
        if isinstance(ref, Run):
            return ref
        text = os.fspath(ref)
        given = Path(text)
        if is_run_dir(given):
            return Run(given)
        is_bare = bool(text) and given.name == text and text not in (".", "..")
        if is_bare:
            if is_run_dir(self.root / text):
                return Run(self.root / text)
            matches = [p for p in self._run_dirs() if p.name.endswith("-" + text)]
            if len(matches) == 1:
                return Run(matches[0])
            if matches:
                runs = sorted((Run(p) for p in matches), key=_sort_key)
                shown = ", ".join(r.id for r in runs[:_SHOWN]) + (" ..." if len(runs) > _SHOWN else "")
                raise RunError(f"{text!r} matches {len(runs)} runs under {self.root}: {shown}",
                               "pass the full run id or the run folder's path")
        if given.is_dir():
            raise RunError(f"{given} is not a run folder (it has no {RUN_JSON})",
                           f"pass a run folder, e.g. one listed by `ls {self.root}`")
        raise RunError(f"no run {text!r} under {self.root}",
                       f"list the runs with `ls {self.root}`, or pass --runs to point at another runs folder")

    def list(self, kind: str | None = None, status: RunStatus | str | None = None) -> builtins.list[Run]:
        """All runs under the root, oldest first.

        A folder whose run.json cannot be read is skipped with a warning.

        Args:
            kind: Only runs of this kind.
            status: Only runs with this status.

        Returns:
            The runs, sorted by id (i.e. by start time).
        """
        wanted = RunStatus(status) if status is not None else None
        runs = []
        for folder in self._run_dirs():
            run = Run(folder)
            try:
                info = run.info
            except RunError as exc:
                warnings.warn(f"skipping damaged run: {exc}", stacklevel=2)
                continue
            if kind is not None and info.get("kind") != kind:
                continue
            if wanted is not None and info.get("status") != wanted:
                continue
            runs.append(run)
        return sorted(runs, key=_sort_key)

    def latest(self, kind: str | None = None, status: RunStatus | str | None = None) -> Run | None:
        """The most recent run, optionally of one kind and status.

        Args:
            kind: Only runs of this kind.
            status: Only runs with this status.

        Returns:
            The run, or ``None`` when there is none.
        """
        runs = self.list(kind=kind, status=status)
        return runs[-1] if runs else None

    def __iter__(self) -> Iterator[Run]:
        return iter(self.list())


def _recipe_text(recipe: Any) -> str | None:
    if recipe is None or isinstance(recipe, str):
        return recipe
    to_toml = getattr(recipe, "to_toml", None)
    if not callable(to_toml):
        raise TypeError(f"recipe must be TOML text or have a to_toml() method, not {type(recipe).__name__}")
    text = to_toml()
    if not isinstance(text, str):
        raise TypeError(f"{type(recipe).__name__}.to_toml() returned {type(text).__name__}, not str")
    return text


def _parent_id(parent: str | os.PathLike[str] | Run) -> str:
    if isinstance(parent, Run):
        return parent.id
    return Path(os.fspath(parent)).name  # an id stays an id; a folder path gives its name


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def resolve_runs(args: Sequence[StrPath], root: StrPath | None = None) -> builtins.list[Run]:
    """Turn command-line run arguments into runs.

    Each argument is a run folder, an id or name suffix under ``root`` (see
    :meth:`RunStore.open`), or a glob such as ``runs/*`` or ``*-baseline``. A glob is matched
    against the current folder first and, if that finds nothing and it is relative, under
    ``root``; folders it matches that are not runs are skipped. Duplicates are dropped and
    the order of the arguments kept (a glob's matches in id order).

    Args:
        args: The arguments.
        root: The runs folder; :func:`default_runs_root` when ``None``.

    Returns:
        The runs, at least one.

    Raises:
        RunError: If an explicitly named path is not a run, a name does not resolve, or
            nothing at all was found.
    """
    store = RunStore(root)
    found: builtins.list[Run] = []
    seen: set[Path] = set()
    for arg in args:
        text = os.path.expanduser(os.fspath(arg))
        if _has_magic(text):
            matches = glob.glob(text)
            if not matches and not os.path.isabs(text):
                matches = glob.glob(os.path.join(store.root, text))
            runs = sorted((Run(m) for m in matches if is_run_dir(m)), key=_sort_key)
        else:
            runs = [store.open(text)]
        for run in runs:
            key = run.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(run)
    if not found:
        what = " ".join(os.fspath(a) for a in args) or "(no arguments)"
        raise RunError(f"no runs found for {what} (looked in the current folder and under {store.root})",
                       f"list the runs with `ls {store.root}`, or pass --runs to point at another runs folder")
    return found
