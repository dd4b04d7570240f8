"""How run files hold confusion matrices: dense lists up to ``DENSE_CLASSES`` classes, nonzero cells beyond.

A ``confusion_matrix`` (rows = true class, columns = predicted) is a C×C list of lists. A train run
keeps one per fold and one for the out-of-fold rows in ``summary.json``; at 500 classes each is
250,000 numbers, mostly zeros, and the file reached 22 MB. Above ``DENSE_CLASSES`` classes the store
therefore writes only the nonzero cells::

    {"format": "cells", "shape": [C, C], "cells": [[true, pred, count], ...]}

(row-major order). Small class lists keep the dense lists, which stay readable as they are, and files
written before this layout hold dense lists at any size. :func:`confusion_matrix` reads either form;
:func:`compact_confusions` is applied by the store to every JSON run file it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: Up to this many classes a confusion matrix is written as dense lists.
DENSE_CLASSES = 100
KEY = "confusion_matrix"
CELLS = "cells"


def compact_confusions(record: Any) -> Any:
    """``record`` with every ``confusion_matrix`` over ``DENSE_CLASSES`` classes as its nonzero cells.

    Dicts and lists are walked at any depth; what changes is copied, the rest is shared with ``record``.
    """
    if isinstance(record, Mapping):
        out = {}
        for key, value in record.items():
            if key == KEY and _is_large_dense(value):
                out[key] = _cells(value)
            else:
                out[key] = compact_confusions(value)
        return out
    if isinstance(record, list | tuple):
        return [compact_confusions(v) for v in record]
    return record


def confusion_matrix(value: Any) -> np.ndarray:
    """The dense ``C×C`` counts (int64) of a stored confusion matrix, whichever form it was written in.

    Raises:
        ValueError: ``value`` is neither form.
    """
    import numpy as np

    if isinstance(value, Mapping):
        if value.get("format") != CELLS:
            raise ValueError(f"unknown confusion matrix format {value.get('format')!r}")
        rows, cols = (int(n) for n in value["shape"])
        dense = np.zeros((rows, cols), dtype=np.int64)
        cells = np.asarray(value[CELLS], dtype=np.int64).reshape(-1, 3)
        dense[cells[:, 0], cells[:, 1]] = cells[:, 2]
        return dense
    dense = np.asarray(value, dtype=np.int64)
    if dense.ndim != 2:
        raise ValueError(f"a confusion matrix has two dimensions, this one has {dense.ndim}")
    return dense


def _is_large_dense(value: Any) -> bool:
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) == 2:  # a numpy array not yet made JSON
        return len(value) > DENSE_CLASSES
    return isinstance(value, list | tuple) and len(value) > DENSE_CLASSES and isinstance(value[0], list | tuple)


def _cells(value: Any) -> dict[str, Any]:
    import numpy as np

    dense = np.asarray(value, dtype=np.int64)
    true, pred = np.nonzero(dense)
    return {"format": CELLS, "shape": list(dense.shape),
            CELLS: np.column_stack([true, pred, dense[true, pred]]).tolist()}
