"""The folders ``clsctl export`` and ``clsctl explain`` write, inside a run or at ``--out DIR``.

::

    export/                 RunFiles.export_dir()
      model.onnx            one graph: the chosen folds (and flip views) averaged
      fold<k>.onnx          or one graph per fold (--per-fold)
      preprocessing.json    how to feed the graphs, what they output, and the parity figure
    explain/<name>/         RunFiles.explain_dir(name); ``top-losses`` for --top-losses
      explanations.json     one entry per image: its PNG, labels, probabilities
      <i>-<stem>.png        image and heat map, side by side
      index.html            the PNGs on one page

Both are written whole or not at all: into a hidden folder beside the target, swapped in when complete
(:func:`staged_folder`), so a failed parity check or a crash never leaves a folder that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from toolkit.errors import RunError, UsageError
from toolkit.store.atomic import atomic_write_json, read_json

PREPROCESSING_JSON = "preprocessing.json"
EXPLANATIONS_JSON = "explanations.json"
EXPLAIN_HTML = "index.html"
ONNX_MODEL = "model.onnx"


def graph_file(fold: int | None = None) -> str:
    """``model.onnx`` (folds averaged) or ``fold<k>.onnx``."""
    return ONNX_MODEL if fold is None else f"fold{int(fold)}.onnx"


def write_export_info(folder: str | os.PathLike[str], info: Mapping[str, Any]) -> Path:
    """Write ``preprocessing.json`` of an export folder."""
    path = Path(folder) / PREPROCESSING_JSON
    atomic_write_json(path, dict(info))
    return path


def read_export_info(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``preprocessing.json`` of an export folder (or of the folder holding a given ``.onnx`` file).

    Raises:
        RunError: there is no export there, or its ``preprocessing.json`` is not a JSON object.
    """
    folder = Path(folder)
    if folder.suffix == ".onnx":
        folder = folder.parent
    path = folder / PREPROCESSING_JSON
    if not path.is_file():
        raise RunError(f"{folder} holds no export ({PREPROCESSING_JSON} is missing)",
                       "run `clsctl export RUN` first, or pass the folder it wrote with --onnx")
    try:
        info = read_json(path)
    except (ValueError, OSError) as exc:
        raise RunError(f"{path} is not valid JSON ({type(exc).__name__})", "export the run again") from None
    if not isinstance(info, dict) or not isinstance(info.get("graphs"), list):
        raise RunError(f"{path} is not an export record", "export the run again")
    return info


def write_explanations(folder: str | os.PathLike[str], index: Mapping[str, Any]) -> Path:
    """Write ``explanations.json`` of an explanation folder."""
    path = Path(folder) / EXPLANATIONS_JSON
    atomic_write_json(path, dict(index))
    return path


def read_explanations(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``explanations.json`` of an explanation folder, with each item's ``png`` made absolute; None when absent."""
    folder = Path(folder)
    path = folder / EXPLANATIONS_JSON
    if not path.is_file():
        return None
    try:
        index = read_json(path)
    except (ValueError, OSError):
        return None
    if not isinstance(index, dict) or not isinstance(index.get("items"), list):
        return None
    for item in index["items"]:
        item["png"] = str(folder / item["png"])
    return index


def check_replaceable(folder: str | os.PathLike[str], marker: str, option: str = "--out") -> None:
    """Refuse to replace a folder that holds files but is not an earlier output of the same kind (``marker``).

    Raises:
        UsageError: ``folder`` is a file, or a non-empty folder without ``marker``.
    """
    folder = Path(folder)
    if folder.is_file():
        raise UsageError(f"{option} {folder} is a file", "pass a folder (it is created)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).is_file():
        raise UsageError(f"{option} {folder} already holds other files, which would be replaced",
                         "pass a new or empty folder")


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A new hidden folder beside ``final`` to write into; it replaces ``final`` when the block ends cleanly.

    An error in the block removes the staged folder and leaves ``final`` as it was. The swap renames
    the old folder aside first, so at no moment is there neither.
    """
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    staged = final.with_name(f".{final.name}.tmp-{tag}")
    staged.mkdir()
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{tag}")
    if final.exists():
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)
