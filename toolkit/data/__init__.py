"""Data stage: manifests from image sources, and the targets derived from them.

Names are re-exported lazily (PEP 562) so ``import toolkit.data`` stays cheap: pandas and
friends load only when a name is first used, and nothing here ever imports torch. To export
more names, add them to ``_EXPORTS`` (name → defining module).
"""

from __future__ import annotations

from toolkit._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    # sources
    "BUILTIN_DATASETS": "toolkit.data.sources",
    "builtin_root": "toolkit.data.sources",
    "default_cache_dir": "toolkit.data.sources",
    "load_manifest": "toolkit.data.sources",
    "manifest_from_folder": "toolkit.data.sources",
    "manifest_from_pattern": "toolkit.data.sources",
    "manifest_from_table": "toolkit.data.sources",
    "manifest_from_unlabeled": "toolkit.data.sources",
    # targets
    "apply_targets": "toolkit.data.targets",
    "bin_labels": "toolkit.data.targets",
    "check_classes": "toolkit.data.targets",
    "class_order": "toolkit.data.targets",
    "encode_labels": "toolkit.data.targets",
    "map_order": "toolkit.data.targets",
    "target_columns": "toolkit.data.targets",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
