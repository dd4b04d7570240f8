"""Cleaning stage: duplicate and near-duplicate images, label issues.

Names are re-exported lazily (PEP 562) so ``import toolkit.clean`` stays cheap. To export more
names, add them to ``_EXPORTS`` (name → defining module).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # duplicates
    "DEFAULT_NEAR_DISTANCE": "toolkit.clean.duplicates",
    "duplicate_groups": "toolkit.clean.duplicates",
    "duplicate_pairs": "toolkit.clean.duplicates",
    "hamming": "toolkit.clean.duplicates",
    "hash_image": "toolkit.clean.duplicates",
    "image_hashes": "toolkit.clean.duplicates",
    "perceptual_hash": "toolkit.clean.duplicates",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
