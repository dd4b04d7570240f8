"""One process at a time per run folder: an exclusive lock held for as long as a run is trained.

The lock is ``flock`` on a file inside the folder. The kernel drops it when the holding process ends
in any way, ``kill -9`` and power cuts included, so there is never a stale lock to clean up (a pid
file would need the "is that pid still alive?" guess that :attr:`Run.stale` makes). The holder writes
its pid and host into the file so that a process refused can say who holds it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

from toolkit.errors import RunError

try:
    import fcntl
except ImportError:  # not on Windows, where clsctl does not lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "folder_lock"]

LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` for the duration of a block; fail at once if it is held.

    Locks are per open file, so a second ``folder_lock`` on the same folder is refused even inside the
    process that holds the first. Processes forked while it is held (DataLoader workers) share it until
    they exit.

    Args:
        folder: The folder to lock (it must exist).
        what: What the folder is, for the error message (e.g. ``run 20261122-101500-baseline``).

    Raises:
        RunError: Another process (or another ``folder_lock`` of this one) holds the lock.
    """
    path = Path(folder) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _try_lock(fd, path, what)
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            if locked:
                # Emptied while still held, so a later reader never takes our pid for a live holder's.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _try_lock(fd: int, path: Path, what: str) -> bool:
    """Take the lock without waiting; False where the file system cannot lock (the block then runs unlocked)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunError(f"{what} is in use by {_holder(path)}",
                       "wait for that process to end (or stop it), then run the command again") from None
    except OSError as exc:
        # Some network file systems have no locks (ENOLCK, EOPNOTSUPP): refusing to train there would be
        # worse than the rare double trainer the lock guards against.
        warnings.warn(f"cannot lock {path} ({exc.strerror}); another trainer on this run would not be noticed",
                      stacklevel=3)
        return False
    return True


def _holder(path: Path) -> str:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except OSError:
        pid, host = "", ""
    if not pid.isdigit():
        return "another process"  # it has the lock but has not written its pid yet
    return f"process {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
