"""Cleaning stage: duplicate and near-duplicate images, label issues.

Names are re-exported lazily (PEP 562) so ``import toolkit.clean`` stays cheap. To export more
names, add them to ``_EXPORTS`` (name → defining module).
"""

from __future__ import annotations

from toolkit._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
