"""Shared fixtures. Tests make their own tiny data; the real datasets are only for `slow` tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """Where the real datasets live: $CLSCTL_DATA or ../shared/data beside the repo."""
    return Path(os.environ.get("CLSCTL_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_dataset():
    """Return a function that gives a real dataset's folder, or skips the test when it is absent."""

    def get(name: str) -> Path:
        path = shared_data() / name
        if not (path / "manifest.csv").is_file():
            pytest.skip(f"dataset {name} not found under {shared_data()} (set CLSCTL_DATA)")
        return path

    return get


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Keep runs and caches of every test out of the user's folders."""
    monkeypatch.setenv("CLSCTL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("CLSCTL_RUNS", str(tmp_path_factory.getbasetemp() / "runs"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a second thread stalls when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
