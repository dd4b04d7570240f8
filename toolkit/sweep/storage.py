"""Where a study lives: a journal file in the runs folder by default, or a database many machines share.

The default is Optuna's ``JournalStorage`` on a ``JournalFileBackend`` (``runs/studies/<study>.journal``),
not SQLite. Several ``clsctl sweep`` processes on one machine write the same study: the journal is an
append-only log, each write one short ``O_APPEND`` of whole lines under a lock file and fsync'd, and
each process replays the lines it has not seen. SQLite takes one lock for the whole database, so
concurrent writers wait and then fail with "database is locked" (Optuna and SQLAlchemy both advise
against it for parallel workers), and its locking is unreliable on network file systems, where the
journal's lock file still works. The journal is plain text, so a study survives a crash of any worker.

``--storage postgresql://…`` (or ``mysql://…``) uses Optuna's ``RDBStorage``: the way workers on many
machines share one study. A path instead of a URL is a journal file at that path (a shared NFS folder
works, too).

A worker that dies leaves its trial failed and the trial retried, not ``running`` forever: each running
trial beats every ``heartbeat`` seconds, and the next trial any worker starts fails the trials that
stayed silent for twice as long, and queues them again (Optuna's ``RetryHeartbeatStaleTrialCallback``).
``RDBStorage`` does this itself; the journal storage here adds it, and fails at once a trial whose
process on this machine is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import ToolkitError, UsageError
from toolkit.store.provenance import pid_alive

if TYPE_CHECKING:
    import optuna

# The heartbeat a journal trial records in its system attributes: time, host and process.
HEARTBEAT_ATTR = "clsctl:heartbeat"
# The driver SQLAlchemy picks for a plain scheme, as pip names it (postgresql:// is psycopg 3 in SQLAlchemy 2.1).
_DATABASES = {"postgresql": "psycopg[binary]", "mysql": "mysqlclient, or pymysql with a mysql+pymysql:// URL",
              "sqlite": None}


def is_database_url(storage: str) -> bool:
    """Whether ``storage`` names a database (``postgresql://…``, ``mysql+pymysql://…``, ``sqlite:///…``)."""
    scheme = urllib.parse.urlsplit(storage).scheme.split("+")[0] if "://" in storage else ""
    return scheme in _DATABASES


def describe_storage(storage: str | os.PathLike[str]) -> str:
    """``storage`` fit to print and record: a database URL without its password."""
    text = str(storage)
    if "://" not in text:
        return text
    parts = urllib.parse.urlsplit(text)
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def default_storage_path(runs_root: Path, study: str) -> Path:
    """``<runs>/studies/<study>.journal``: the study's journal when no ``--storage`` is given."""
    return runs_root / "studies" / f"{study}.journal"


def open_storage(storage: str | os.PathLike[str], *, heartbeat: int, retries: int) -> optuna.storages.BaseStorage:
    """The Optuna storage for a database URL or a journal file path, with heartbeats and retries.

    Args:
        storage: A database URL, or the path of a journal file (created with its folder when missing).
        heartbeat: Seconds between a running trial's heartbeats; silent for twice as long, it is failed.
        retries: Times a failed-by-heartbeat trial is queued again.

    Raises:
        UsageError: An unknown URL scheme, or a database whose driver is not installed.
        ToolkitError: The database cannot be reached.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    text = str(storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat API is "experimental"
        return _open(text, heartbeat, RetryHeartbeatStaleTrialCallback(max_retry=retries))


def _open(text: str, heartbeat: int, retry: Any) -> optuna.storages.BaseStorage:
    import optuna

    if "://" in text and not is_database_url(text):
        scheme = urllib.parse.urlsplit(text).scheme
        raise UsageError(f"--storage {describe_storage(text)}: `{scheme}` is not a database clsctl can use",
                         "use postgresql://user:password@host/db, mysql+pymysql://…, or a journal file path")
    if not is_database_url(text):
        path = Path(text).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return _journal_storage_class()(backend, heartbeat=heartbeat, callback=retry)
    try:
        return optuna.storages.RDBStorage(text, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                                          heartbeat_stale_trial_callback=retry,
                                          engine_kwargs={"pool_pre_ping": True})
    except ImportError as exc:  # Optuna wraps the driver's ModuleNotFoundError
        missing = exc if isinstance(exc, ModuleNotFoundError) else exc.__cause__ or exc.__context__
        module = getattr(missing, "name", None) or "its driver"
        scheme = urllib.parse.urlsplit(text).scheme
        package = _DATABASES.get(scheme) if "+" not in scheme else module
        raise UsageError(f"--storage {describe_storage(text)}: the database driver `{module}` is not installed",
                         f"install it (pip install {package})") from None
    except Exception as exc:  # sqlalchemy's OperationalError and friends: say what failed in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"cannot open the study database {describe_storage(text)}: {first}",
                           "check that the server runs, the database exists and the user may write to it") from None


_JOURNAL_CLASS: type | None = None


def _journal_storage_class() -> type:
    """``JournalStorage`` with Optuna's heartbeat interface, built on first use (optuna loads only then)."""
    global _JOURNAL_CLASS
    if _JOURNAL_CLASS is not None:
        return _JOURNAL_CLASS
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat  # the interface RDBStorage implements
    from optuna.trial import TrialState

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        """A journal file storage whose running trials beat, so a dead worker's trial is failed and retried."""

        def __init__(self, backend: Any, *, heartbeat: int, callback: Any) -> None:
            super().__init__(backend)
            self._heartbeat, self._callback = heartbeat, callback

        def record_heartbeat(self, trial_id: int) -> None:
            beat = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
            with contextlib.suppress(UpdateFinishedTrialError):  # the trial ended between two beats
                self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, beat)

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now, host, grace = time.time(), socket.gethostname(), 2 * self._heartbeat
            stale = []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                beat = trial.system_attrs.get(HEARTBEAT_ATTR)
                if not isinstance(beat, dict):
                    started = trial.datetime_start.timestamp() if trial.datetime_start else now
                    if now - started > grace:  # its worker died before the first beat
                        stale.append(trial._trial_id)
                    continue
                gone = beat.get("host") == host and beat.get("pid") != os.getpid() and not pid_alive(int(beat["pid"]))
                if gone or now - float(beat.get("time", now)) > grace:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int | None:
            return self._heartbeat

        def get_heartbeat_stale_trial_callback(self) -> Any:
            return self._callback

    _JOURNAL_CLASS = HeartbeatJournalStorage
    return _JOURNAL_CLASS
