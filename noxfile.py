"""Test, lint and slow-data sessions; `nox` runs the default `lint` and `tests` sessions."""

from __future__ import annotations

import os

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_venv = "yes"

# Tests never touch the network: timm would retry the hub for ~47 s, albumentations checks for updates.
OFFLINE = {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}


def _sync(session: nox.Session, *groups: str) -> None:
    """Install the locked project and the given dependency groups into the session's venv."""
    args = ["uv", "sync", "--frozen", "--no-default-groups", *(f"--group={g}" for g in groups)]
    session.run_install(*args, env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location})


@nox.session
def tests(session: nox.Session) -> None:
    """Run the CPU test suite (everything not marked slow)."""
    _sync(session, "test")
    session.run("pytest", "-m", "not slow", *session.posargs, env=OFFLINE)


@nox.session(default=False)
def slow(session: nox.Session) -> None:
    """Run the slow tests on the real datasets under ../shared/data (or $CLSCTL_DATA)."""
    _sync(session, "test")
    env = {**OFFLINE, "CLSCTL_DATA": os.environ.get("CLSCTL_DATA", "../shared/data")}
    session.run("pytest", "-m", "slow", *session.posargs, env=env)


@nox.session(default=False)
def lint(session: nox.Session) -> None:
    """Run ruff and the import contracts (layers, no import cycles, no typer or toolkit.cli in library code)."""
    _sync(session, "lint")
    session.run("ruff", "check", "toolkit", "tests", "noxfile.py")
    session.run("lint-imports")
