"""The artifact store: a run is a folder, and the folder is the record.

See :mod:`toolkit.store.run` for the layout and the id scheme, :mod:`toolkit.store.atomic`
for the crash-safe writers, and :mod:`toolkit.store.fingerprint` for data fingerprints.
Nothing heavy is imported here (pandas only when a table is asked for).
"""

from __future__ import annotations

from toolkit.store.atomic import (
    append_csv_row,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_writer,
    read_json,
    to_jsonable,
)
from toolkit.store.fingerprint import data_fingerprint, manifest_fingerprint
from toolkit.store.run import (
    RUN_JSON,
    Run,
    RunStatus,
    RunStore,
    default_runs_root,
    is_run_dir,
    resolve_runs,
    slugify,
)

__all__ = [
    "RUN_JSON",
    "Run",
    "RunStatus",
    "RunStore",
    "append_csv_row",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "data_fingerprint",
    "default_runs_root",
    "is_run_dir",
    "manifest_fingerprint",
    "read_json",
    "resolve_runs",
    "slugify",
    "to_jsonable",
]
