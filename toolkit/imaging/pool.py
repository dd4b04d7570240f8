"""Process pools for per-image passes: how many workers, how many images per task, results in order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from toolkit.runtime import cores

__all__ = ["chunk_size", "default_workers", "imap_ordered"]


def default_workers() -> int:
    """Workers of a per-image pass: one per CPU core this process may use."""
    return max(1, cores())


def chunk_size(n_items: int, workers: int) -> int:
    """Items per task for a pool: about eight tasks per worker, at most 64 items each.

    Enough tasks that the workers finish together and progress stays smooth; enough items per
    task that stacked numpy calls and inter-process messages are amortised.
    """
    return max(1, min(64, n_items // (max(1, workers) * 8)))


def imap_ordered(func: Callable[[Any], Any], items: Sequence[Any], workers: int | None = None,
                 chunksize: int | None = None) -> Iterator[Any]:
    """``map(func, items)`` on a process pool, yielding results in input order as they come.

    Args:
        func: A picklable (module-level) function.
        items: Its arguments.
        workers: Processes; ``None`` = all cores; ``<= 1`` (or a single item) runs in this process.
        chunksize: Items sent to a worker at once; default :func:`chunk_size`.

    Yields:
        ``func(item)`` for each item, in order.
    """
    n_workers = default_workers() if workers is None else int(workers)
    n_workers = min(n_workers, len(items))
    if n_workers <= 1:
        yield from map(func, items)
        return
    import multiprocessing

    if chunksize is None:
        chunksize = chunk_size(len(items), n_workers)
    with multiprocessing.get_context().Pool(n_workers) as pool:
        yield from pool.imap(func, items, chunksize=chunksize)
