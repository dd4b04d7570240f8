"""The artifact store: a run is a folder, and the folder is the record.

:mod:`toolkit.store.run` is one run folder (``Run``), :mod:`toolkit.store.files` the typed reader and
writer of every file in it, :mod:`toolkit.store.runstore` the runs folder (create, open, list, globs),
:mod:`toolkit.store.tables` the atomic table writer and the probability-frame layout,
:mod:`toolkit.store.confusion` how JSON run files hold confusion matrices (and their one reader),
:mod:`toolkit.store.atomic` the crash-safe writers, :mod:`toolkit.store.lock` the lock a trainer holds
on its run folder (``Run.lock()``) and :mod:`toolkit.store.fingerprint` data fingerprints. Nothing
heavy is imported here (pandas only when a table is asked for).
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
    FORMAT_VERSION,
    RUN_JSON,
    Run,
    RunStatus,
    default_runs_root,
    is_run_dir,
    run_holding,
    slugify,
)
from toolkit.store.runstore import RunStore, resolve_runs

__all__ = [
    "FORMAT_VERSION",
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
    "run_holding",
    "manifest_fingerprint",
    "read_json",
    "resolve_runs",
    "slugify",
    "to_jsonable",
]
