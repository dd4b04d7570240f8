"""Provenance a run records about itself: the clock, git state, package versions, the host."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import platform
import socket
import subprocess
import sys
from typing import Any

_GIT_TIMEOUT_S = 3.0

# Distributions recorded in run.json; looked up with importlib.metadata so none is imported.
_VERSIONED = ("torch", "timm", "torchvision", "albumentations", "accelerate", "numpy", "pandas",
              "scikit-learn", "cleanlab")


def utcnow() -> _dt.datetime:
    """The current time in UTC. One seam for the clock: tests pin it to force same-second id collisions."""
    return _dt.datetime.now(_dt.UTC)


def iso(moment: _dt.datetime) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``."""
    return moment.astimezone(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: Any) -> _dt.datetime | None:
    """The time an :func:`iso` string gives, or None."""
    if not isinstance(text, str):
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


# --------------------------------------------------------------------------- provenance


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None  # no git installed, or a repository too slow to ask


def git_state() -> tuple[str | None, bool | None]:
    """The checkout's HEAD commit and whether tracked files differ from it; ``(None, None)`` outside git."""
    head = _git("rev-parse", "--verify", "--quiet", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None, None
    # --no-optional-locks: plain `git status` may rewrite the index, which must not happen
    # behind the back of someone working in the same checkout.
    status = _git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return head.stdout.strip(), dirty


@functools.cache
def versions() -> dict[str, str]:
    """Python, clsctl and the versions of the libraries a run's numbers depend on (installed ones only)."""
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
def host() -> dict[str, str]:
    """The machine's name and platform."""
    return {"hostname": socket.gethostname(), "platform": platform.platform()}


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (True when that cannot be told)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
