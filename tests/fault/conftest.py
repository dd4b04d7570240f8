"""Fault tests import the shared generators (``imagegen``, ``rungen``) from the parent ``tests/`` folder,
run torch on one thread, and share a tiny ImageFolder."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import pytest  # noqa: E402  (after the path: the fixtures below import the generators)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three classes of eight 16-px images (a module's tests may train on it and share the runs)."""
    from imagegen import make_imagefolder

    return make_imagefolder(tmp_path_factory.mktemp("imgs") / "train", per_class=8, size=16)
