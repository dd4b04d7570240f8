"""The runs folder: creating runs, finding them by folder, id, name suffix or glob, and listing them.

Run ids are ``<YYYYmmdd-HHMMSS>-<slug>``, the time in UTC (so ids sort by time whatever the machine's
time zone) and the slug the sanitised run name, or the kind when there is no name. When that folder
already exists (two runs started in the same second) a counter goes *between* time and slug:
``20261122-101500-2-baseline``, so an id always ends with ``-<slug>`` and ``runs/*-baseline`` finds
every run named baseline. Folders are made with ``os.mkdir``, which fails if the folder exists, so ids
are unique across processes without a lock. ``run.json`` is written last, so a folder without it is
never taken for a run.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import glob
import itertools
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from toolkit.errors import RunError
from toolkit.store import provenance
from toolkit.store.atomic import atomic_write_json, atomic_write_text
from toolkit.store.files import RECIPE_TOML
from toolkit.store.run import FORMAT_VERSION, RUN_JSON, Run, RunStatus, default_runs_root, is_run_dir, slugify

__all__ = ["RunStore", "resolve_runs"]

StrPath = str | os.PathLike[str]

_STAMP_FORMAT = "%Y%m%d-%H%M%S"
_STAMP_LEN = len("20260101-000000")
_MAX_SAME_SECOND = 10_000
_SHOWN = 10

# Keys RunStore.create owns; ``extra`` may not overwrite them.
_RESERVED = frozenset({
    "id", "kind", "name", "status", "parents", "started", "ended", "duration_s", "error",
    "git_commit", "git_dirty", "versions", "host", "seed", "data_fingerprint", "pid", "argv", "cwd",
    "format_version",
})


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
        now = provenance.utcnow()
        folder = self._make_folder(now, slug)
        try:
            if recipe_text is not None:
                atomic_write_text(folder / RECIPE_TOML, recipe_text)
            commit, dirty = provenance.git_state()
            info: dict[str, Any] = {
                "id": folder.name,
                "format_version": FORMAT_VERSION,
                "kind": kind,
                "name": name,
                "status": RunStatus.RUNNING.value,
                "parents": [_parent_id(p) for p in parents],
                "started": provenance.iso(now),
                "ended": None,
                "duration_s": None,
                "error": None,
                "git_commit": commit,
                "git_dirty": dirty,
                "versions": provenance.versions(),
                "host": provenance.host(),
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
                warnings.warn(f"skipping run: {exc}", stacklevel=2)
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
