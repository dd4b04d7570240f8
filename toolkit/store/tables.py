"""Tables on disk: the one atomic DataFrame writer and reader, and the one probability-frame builder.

Every CSV or Parquet file a stage writes (manifests, ``oof.parquet``, prediction sets, submissions)
goes through :func:`write_table`, so they share one set of CSV settings and are replaced atomically.
:func:`probability_frame` lays out the probability tables (out-of-fold rows and prediction sets
alike): ``id``, ``path``, optional ``fold``, then per head an optional ``label`` and ``pred`` column
and one float32 probability column per class, named by the class (``<head>:<class>``,
``label:<head>`` and ``pred:<head>`` when there are several heads).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

StrPath = str | os.PathLike[str]

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
# Columns of a probability table that are not class probabilities.
RESERVED_COLUMNS = ("id", "path", "fold", "label", "pred")


def table_format(path: StrPath) -> str:
    """``csv`` or ``parquet`` from a file name; anything else is a :class:`DataError`."""
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataError(f"{path}: unknown table suffix {suffix or '(none)'!r}", "use a .csv or .parquet file")


def write_table(frame: pd.DataFrame, path: StrPath) -> Path:
    """Write a DataFrame atomically as CSV or Parquet (by suffix); the index is never written.

    CSV lines end with ``\\n`` on every platform. Parquet keeps ``frame.attrs`` where JSON can hold them.

    Returns:
        The written path.
    """
    from toolkit.store.atomic import atomic_writer

    target = Path(path)
    if table_format(target) == "csv":
        # streamed: the whole text at once would be several times the file (500 probability columns as text)
        with atomic_writer(target, "w", newline="") as handle:
            frame.to_csv(handle, index=False, lineterminator="\n")
        return target
    out = frame
    if frame.attrs:
        # pandas stores attrs as JSON in the Parquet metadata; keep only what JSON can hold.
        out = frame.copy(deep=False)
        out.attrs = json.loads(json.dumps(frame.attrs, default=str))
    # Straight into the temporary file: an in-memory buffer held the whole file two or three times over
    # (its growth, then getvalue's copy), 6-9 KB per row of a 500-class probability table.
    with atomic_writer(target, "wb") as handle:
        out.to_parquet(handle, index=False)
    return target


def read_table(path: StrPath, *, text_columns: Sequence[str] = (), first_column_text: bool = False, all_text: bool = False,
               keep_default_na: bool = True, fmt: str | None = None, what: str = "table",
               hint: str = "check that it is a valid CSV (UTF-8, with a header row) or Parquet file") -> pd.DataFrame:
    """Read a CSV or Parquet table, with one clear error for a missing or unreadable file.

    Args:
        path: A ``.csv``, ``.parquet`` or ``.pq`` file.
        text_columns: CSV columns read as text, as written (``"0001"`` must not become ``1``).
        first_column_text: Also read the first CSV column as text (the id column of submissions).
        all_text: Read every CSV column as text.
        keep_default_na: False keeps cells like ``NA`` or ``null`` as text.
        fmt: ``csv`` or ``parquet`` whatever the suffix (default: from the suffix).
        what: How the error names the file (``manifest``, ``sample submission``...).
        hint: How the error says to fix it.

    Raises:
        DataError: Missing file, unknown suffix, a CSV that is empty or not UTF-8 text (each named as
            such), or a file pandas cannot parse.
    """
    import pandas as pd

    target = Path(path)
    if not target.is_file():
        raise DataError(f"{what} {target} does not exist", hint)
    kind = fmt or table_format(target)
    if kind == "csv":
        _check_csv_text(target, what)
    try:
        if kind == "parquet":
            return pd.read_parquet(target)
        if all_text:
            return pd.read_csv(target, dtype=str, keep_default_na=keep_default_na)
        dtype = {c: str for c in text_columns}
        if first_column_text:
            header = pd.read_csv(target, nrows=0)
            if len(header.columns):
                dtype[header.columns[0]] = str
        return pd.read_csv(target, dtype=dtype or None, keep_default_na=keep_default_na)
    except UnicodeDecodeError:
        raise _not_utf8(target, what) from None
    except (ValueError, OSError, IndexError, pd.errors.ParserError) as exc:
        # pyarrow's ArrowInvalid and pandas' EmptyDataError are ValueErrors. The C parser's messages
        # end in a newline, and the CLI promises one line.
        raise DataError(f"cannot read {what} {target}: {' '.join(str(exc).split())}", hint) from None


def release_freed_tables() -> None:
    """Hand back to the system the memory of Parquet tables read here and since dropped.

    A Parquet table's columns live in pyarrow's memory pool (pandas keeps them without a copy), and
    the pool keeps what they free for its next allocations: dropping a 500-class table read for its
    numbers would lower nothing until the process ends.
    """
    import sys

    if "pyarrow" in sys.modules:  # nothing read, nothing to release
        sys.modules["pyarrow"].default_memory_pool().release_unused()


_TEXT_HINT = "save it as UTF-8 text (Excel: 'CSV UTF-8'; or `iconv -f {encoding} -t UTF-8 FILE > NEW.csv`)"
_WIDE_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xff\xfe", "UTF-16"),
              (b"\xfe\xff", "UTF-16"))


def _check_csv_text(target: Path, what: str) -> None:
    """Refuse, naming the cause, a CSV that pandas would misread or fail on with a codec message.

    Only the first 4 KiB are read: enough for a byte-order mark, the NUL bytes of UTF-16 text or of a
    binary file, and emptiness.
    """
    with open(target, "rb") as fh:
        head = fh.read(4096)
    for bom, encoding in _WIDE_BOMS:
        if head.startswith(bom):
            raise DataError(f"{what} {target} is {encoding} text, not UTF-8", _TEXT_HINT.format(encoding=encoding))
    if b"\x00" in head:
        raise DataError(f"{what} {target} is not a text CSV (it holds NUL bytes: a binary file, or UTF-16 "
                        "without a byte-order mark)", _TEXT_HINT.format(encoding="UTF-16"))
    if not head.lstrip(b"\xef\xbb\xbf").strip():
        raise DataError(f"{what} {target} is empty", "a CSV starts with a header row naming its columns")


def _not_utf8(target: Path, what: str) -> DataError:
    """Where the first byte that is not UTF-8 is (pandas' offset is into one of its read buffers)."""
    data = target.read_bytes()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as first:
        line = data.count(b"\n", 0, first.start) + 1
        where = f" (line {line} holds byte 0x{data[first.start]:02x})"
    return DataError(f"{what} {target} is not UTF-8 text{where}: Latin-1 or Windows-1252, perhaps",
                     _TEXT_HINT.format(encoding="LATIN1"))


def probability_frame(ids: Sequence[Any], paths: Sequence[Any] | None, probs: Mapping[str, np.ndarray],
                      classes: Mapping[str, Sequence[str]], *, folds: Sequence[int] | np.ndarray | int | None = None,
                      labels: Mapping[str, np.ndarray] | None = None,
                      preds: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The probability table of out-of-fold rows or of a prediction set.

    Args:
        ids: One id per row (written as text).
        paths: Relative image paths, or None (the column is then empty).
        probs: Head → probabilities ``[N, C]`` in ``classes[head]`` order.
        classes: Head → class names.
        folds: The fold of each row (or one fold for all rows); None leaves the column out.
        labels: Head → true class index per row; when given, ``label`` and ``pred`` columns are added.
        preds: Head → predicted class index per row, where it is not the argmax of ``probs`` (hard voting).

    Returns:
        The frame, columns in the documented order, probabilities as float32.
    """
    import numpy as np
    import pandas as pd

    columns: dict[str, Any] = {"id": [str(i) for i in ids]}
    n = len(columns["id"])
    columns["path"] = list(paths) if paths is not None else [None] * n
    if folds is not None:
        columns["fold"] = np.full(n, folds, dtype=np.int64) if np.ndim(folds) == 0 else np.asarray(folds)
    multi = len(probs) > 1
    pieces = [pd.DataFrame(columns)]
    for head, p in probs.items():
        names = np.asarray(list(classes[head]), dtype=object)
        p = np.asarray(p)
        if labels is not None:
            pred = np.asarray(preds[head]) if preds is not None else p.argmax(1)
            pieces.append(pd.DataFrame({f"label:{head}" if multi else "label": names[np.asarray(labels[head])],
                                        f"pred:{head}" if multi else "pred": names[pred]}))
        # One float32 copy per head, laid out class by class as pandas keeps a block, so that neither
        # pandas (gathering separate columns into a block) nor pyarrow (reading strided columns) copies it again.
        block = np.ascontiguousarray(p.T, dtype=np.float32)
        if np.may_share_memory(block, p):
            block = block.copy()  # the caller's array stays the caller's
        pieces.append(pd.DataFrame(block.T, copy=False,
                                   columns=[f"{head}:{c}" if multi else c for c in classes[head]]))
    return pd.concat(pieces, axis=1)


def probability_arrays(frame: pd.DataFrame, heads: Sequence[str], classes: Mapping[str, Sequence[str]], *,
                       what: str = "probability table") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None,
                                                                 np.ndarray | None]:
    """Read back what :func:`probability_frame` laid out.

    Returns:
        ``(probs, labels, folds)``: head → probabilities ``[N, C]`` (float64, ``classes[head]`` order);
        head → true class index per row, or None when the table has no label columns; the fold per
        row, or None without a ``fold`` column.

    Raises:
        DataError: a class column is missing, or a label is not in the class list (both named).
    """
    import numpy as np

    multi = len(heads) > 1
    probs: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] | None = {}
    for head in heads:
        columns = [f"{head}:{c}" if multi else str(c) for c in classes[head]]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"{what} lacks the class column(s) {', '.join(missing[:5])}",
                            "it was written for other classes; predict or train again")
        probs[head] = frame[columns].to_numpy(dtype=np.float64)
        label_col = f"label:{head}" if multi else "label"
        if labels is None or label_col not in frame.columns:
            labels = None
            continue
        index = {str(c): i for i, c in enumerate(classes[head])}
        text = frame[label_col].astype(str).to_numpy()
        unknown = sorted({t for t in text if t not in index})
        if unknown:
            raise DataError(f"{what} holds label(s) {', '.join(unknown[:5])} outside the class list of `{head}`",
                            "the run's table and its class list disagree; retrain it")
        labels[head] = np.array([index[t] for t in text], dtype=np.int64)
    folds = frame["fold"].to_numpy(dtype=np.int64) if "fold" in frame.columns else None
    return probs, labels, folds
