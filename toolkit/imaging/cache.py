"""A decoded-image cache on disk: decode each source image once, reuse it every epoch, fold and run.

Big source images (400–800 px sketches, phone photos of faces) cost one decode and one downscale
instead of one per epoch. Entries are ``.npy`` arrays, downscaled (never upscaled, aspect kept) so
their shorter side is the largest the recipe needs, and keyed by the source file's resolved path and
:func:`file_identity` (size, modification and change times, inode) together with that side: editing or
replacing a file invalidates its entry without any bookkeeping, even when its size and modification
time were put back. Concurrent writers (DataLoader workers, DDP ranks, parallel runs) are safe:
each entry is written to a temporary file and moved into place. Entries read once are also kept in
memory, up to ``data.cache_ram_mb`` per process, so later epochs skip even the file read (a changed
file is still noticed: the in-memory copy is checked against the file's identity).

With a disk budget (``data.cache_disk_gb``) the folder (every side together) is kept under it by
evicting the least recently used entries: a disk hit moves its entry's modification time to now, and
each writing process lists the folder at its first write and again whenever it has added its share
of a twentieth of the budget, removing the oldest entries until the whole is at most nine tenths of
it. Whatever the writers do between listings then adds at most that twentieth, so the folder stays
under the budget as long as the writers are counted right: the processes of :func:`warm_cache`'s pool
and the workers of a DataLoader are (more processes than that, e.g. several DDP ranks, each add their
own share). Listing only that often keeps the cost per write constant however many entries the
folder holds: about twenty ``stat`` calls per entry written and per concurrent writer, amortised.
Temporary files count too: a listing counts those being written, and removes those a killed writer
left (untouched for ``STALE_TEMP_SECONDS``), which nothing else would ever remove. An image whose entry
alone would not fit under the low-water mark is returned without being written: storing it would
evict every other entry and still leave the folder over its mark.

Training and prediction read images through the same :func:`image_loader`, so the pixels a model
is evaluated on come from exactly the same decode and downscale it was trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.imaging.decode import load_image_array


def file_identity(st: os.stat_result) -> str:
    """What tells one version of a file from another at the same path, from its ``os.stat``.

    Size and modification time alone miss a same-size replacement whose modification time was put
    back (``cp -p``, ``rsync -t``, a tar extraction, ``os.utime``), and would serve the old file's
    pixels. The change time (ctime) cannot be set by anyone: every write, replacement and ``utime``
    moves it; a replacement by rename also brings a new inode. A ``chmod`` or ``chown`` moves it too,
    which costs one decode, never a wrong image.
    """
    return f"{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"


def default_cache_root() -> Path:
    """``$CLSCTL_CACHE/decoded`` (default ``~/.cache/clsctl/decoded``)."""
    base = os.environ.get("CLSCTL_CACHE") or Path.home() / ".cache" / "clsctl"
    return Path(base) / "decoded"


#: Evict down to this share of the disk budget, so the next entries fit before the next listing.
_LOW_WATER = 0.9
#: Bytes one writer adds between listings, as a share of the budget (at most the headroom above).
_SCAN_EVERY = 0.05
#: A temporary file untouched this long was left by a killed writer (a live one writes an entry in
#: well under a second, and every write moves its modification time).
STALE_TEMP_SECONDS = 600


def cache_usage(base: str | os.PathLike[str]) -> list[tuple[int, int, str]]:
    """Every entry under ``base`` (all sides) as ``(last use in ns, bytes, path)``, least recently used first.

    Temporary files are not entries; stale ones are removed on the way (:func:`cache_listing`).
    """
    return cache_listing(base)[0]


def cache_listing(base: str | os.PathLike[str]) -> tuple[list[tuple[int, int, str]], int]:
    """:func:`cache_usage`'s entries, and the bytes of the temporary files being written.

    Temporary files untouched for ``STALE_TEMP_SECONDS`` are removed instead of counted.
    """
    import time

    found = []
    writing = 0
    stale_before = time.time_ns() - STALE_TEMP_SECONDS * 10**9
    for side in _subdirs(base):
        for shard in _subdirs(side):
            for item in _scandir(shard):
                entry = item.name.endswith(".npy") and not item.name.startswith(".")
                temp = item.name.startswith(".") and item.name.endswith(".tmp")
                if not (entry or temp):
                    continue
                try:
                    st = item.stat()
                except OSError:
                    continue  # evicted, replaced or moved into place by another process meanwhile
                if entry:
                    found.append((st.st_mtime_ns, st.st_size, item.path))
                elif st.st_mtime_ns >= stale_before:
                    writing += st.st_size
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(item.path)
    found.sort()
    return found, writing


def _scandir(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def _subdirs(folder: str | os.PathLike[str]) -> list[str]:
    return [item.path for item in _scandir(os.fspath(folder)) if item.is_dir(follow_symlinks=False)]


def evict_to(base: str | os.PathLike[str], limit_bytes: int) -> tuple[int, int]:
    """Remove the least recently used entries under ``base`` until the folder takes at most ``limit_bytes``.

    Temporary files being written count towards it (they cannot be removed); stale ones are removed.

    Returns:
        The bytes left (entries and temporary files) and the entries removed.
    """
    entries, writing = cache_listing(base)
    total = writing + sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in entries:
        if total <= limit_bytes:
            break
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # another process evicted it first; it no longer counts either way
        except OSError:
            continue
        total -= size
        removed += 1
    return total, removed


class DecodedImageCache:
    """Decoded, downscaled images as ``.npy`` files under ``root/<side>/``, optionally within a disk budget."""

    def __init__(self, root: str | os.PathLike[str], short_side: int, ram_mb: float = 0,
                 disk_gb: float | None = None, writers: int | None = None) -> None:
        self.base = Path(root)
        self.root = Path(root) / f"s{short_side}"
        self.short_side = short_side
        self.hits = 0
        self.misses = 0
        # Disk tier: the whole folder (every side) within this many bytes; None = unbounded.
        self.disk_budget = None if disk_gb is None else int(disk_gb * 2**30)
        self.writers = writers  # processes writing at once; None: this one, or its DataLoader's workers
        self.written = 0  # bytes added since this process last listed the folder
        self.evicted = 0
        self.too_large = 0  # images not written: their entry alone would not fit under the low-water mark
        self._writer_pid = -1  # a copy in a new process (fork, DataLoader worker) lists before its first write
        self._share = 0.0
        # In-process tier: arrays already read, by path and file identity so an edited file still misses.
        self.ram_budget = int(ram_mb * 2**20)
        self.ram_bytes = 0
        self._ram: dict[str, tuple[str, np.ndarray]] = {}

    def entry(self, path: str | os.PathLike[str]) -> Path:
        """Where the cached array of ``path`` lives; changes whenever the file does."""
        return self._entry(os.path.realpath(path), os.stat(path))

    def _entry(self, real: str, st: os.stat_result) -> Path:
        key = hashlib.blake2b(f"{real}\0{file_identity(st)}".encode(), digest_size=16).hexdigest()
        return self.root / key[:2] / f"{key}.npy"

    def has(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` has an entry (no check that it is intact: a torn one is rebuilt on load)."""
        try:
            return self.entry(path).is_file()
        except OSError:
            return False

    def decode(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Decode with the one image loader and downscale so the shorter side is ``short_side``."""
        array = load_image_array(path)
        h, w = array.shape[:2]
        short = min(w, h)
        if short <= self.short_side:
            return array
        scale = self.short_side / short
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
        from PIL import Image

        return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR))

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The cached array of ``path``, decoding and storing it on a miss.

        Arrays are shared with the in-memory tier: treat them as read-only.
        """
        name = os.fspath(path)
        try:
            st = os.stat(name)
        except OSError:
            return load_image_array(name)  # raises the loader's own ImageError (missing, unreadable)
        held = self._ram.get(name)
        if held is not None and held[0] == file_identity(st):
            self.hits += 1
            return held[1]
        entry = self._entry(os.path.realpath(name), st)
        try:
            array = np.load(entry, allow_pickle=False)
            self.hits += 1
            if self.disk_budget is not None:
                _touch(entry)
            self._keep(name, st, array)
            return array
        except (FileNotFoundError, ValueError, EOFError, OSError):
            pass  # missing, or torn by a crash: rebuild it
        array = self.decode(path)
        self.misses += 1
        self._keep(name, st, array)
        if self.disk_budget is not None and array.nbytes > self.disk_budget * _LOW_WATER:
            self.too_large += 1
            return array
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
                size = fh.tell()
            if self.disk_budget is not None:
                self._make_room(size)
            os.replace(tmp, entry)
        except OSError:
            # A full or read-only disk must not stop training: the decoded image is still returned.
            tmp.unlink(missing_ok=True)
        return array

    def _make_room(self, size: int) -> None:
        """Before ``size`` more bytes land: list and evict at this process's first write, then per share added."""
        assert self.disk_budget is not None
        if self._writer_pid != os.getpid():
            self._writer_pid = os.getpid()
            self._share = self.disk_budget * _SCAN_EVERY / max(1, self.writers or _loader_workers())
            self.written = self.disk_budget  # what other processes left is unknown here
        self.written += size
        if self.written > self._share:
            self.enforce_budget(reserve=size)

    def enforce_budget(self, reserve: int = 0) -> int:
        """Evict least recently used entries so the folder plus ``reserve`` bytes fit the budget's low-water mark.

        Returns:
            The bytes the folder holds now (0 when there is no budget).
        """
        if self.disk_budget is None:
            return 0
        limit = max(0, int(self.disk_budget * _LOW_WATER) - reserve)
        total, removed = evict_to(self.base, limit)
        self.evicted += removed
        self.written = 0
        return total

    def _keep(self, name: str, st: os.stat_result, array: np.ndarray) -> None:
        old = self._ram.pop(name, None)
        if old is not None:
            self.ram_bytes -= old[1].nbytes
        if self.ram_bytes + array.nbytes <= self.ram_budget:
            array.flags.writeable = False  # one copy serves every epoch; a transform must not edit it
            self._ram[name] = (file_identity(st), array)
            self.ram_bytes += array.nbytes

    __call__ = load


def _loader_workers() -> int:
    """The workers of the DataLoader this process serves (1 outside one): each of them writes its own entries."""
    loading = sys.modules.get("torch.utils.data")  # never imported here: a process without torch has no loader
    info = loading.get_worker_info() if loading is not None else None
    return int(info.num_workers) if info is not None else 1


def _touch(entry: Path) -> None:
    # its modification time is its last use, the eviction order; an entry evicted meanwhile was read already
    with contextlib.suppress(OSError):
        os.utime(entry)


@dataclass
class WarmResult:
    """What :func:`warm_cache` or :func:`check_images` did: images decoded (into the cache), images it already
    held, seconds, processes of the pool (0: none was started), and the unreadable files with the reason."""

    decoded: int = 0
    already: int = 0
    seconds: float = 0.0
    processes: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


def _gb(budget: int | None) -> float | None:
    return None if budget is None else budget / 2**30


_pool_cache: DecodedImageCache | None = None  # one per warm-up process, so it lists the folder once, not per chunk


def _start_warm_worker(base: str, short_side: int, disk_gb: float | None, writers: int) -> None:
    global _pool_cache
    _pool_cache = DecodedImageCache(base, short_side, disk_gb=disk_gb, writers=writers)


def _warm_chunk(paths: list[str]) -> tuple[int, list[tuple[str, str]]]:
    assert _pool_cache is not None
    return _warm_into(_pool_cache, paths)


def _warm_into(cache: DecodedImageCache, paths: Sequence[str]) -> tuple[int, list[tuple[str, str]]]:
    from toolkit.errors import ImageError

    before = cache.misses
    errors = []
    for path in paths:
        try:
            cache.load(path)
        except ImageError as exc:
            errors.append((path, exc.reason))
    return cache.misses - before, errors


def warm_cache(cache: DecodedImageCache, paths: Sequence[str], processes: int, *, min_missing: int = 64,
               chunk: int = 32, on_start: Callable[[int, int], None] | None = None) -> WarmResult:
    """Decode every image of ``paths`` that has no cache entry yet, on ``processes`` processes at once.

    Training calls this before its first epoch: the decodes then run on every core side by side,
    instead of inside the first epoch, where one loader worker decodes while the model's threads
    wait for it. Fewer than ``min_missing`` missing images, or a single process, are decoded here in
    this process (a pool would not be faster; the epoch then finds them in the cache), so every file
    that cannot be decoded is found before training either way. Undecodable files are collected, not
    raised. ``on_start(missing, processes)`` is called once a pool is about to start (to tell the user).
    """
    import time
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    unique = list(dict.fromkeys(os.fspath(p) for p in paths))
    missing = [p for p in unique if not cache.has(p)]
    result = WarmResult(already=len(unique) - len(missing))
    processes = min(int(processes), math.ceil(len(missing) / chunk))
    if processes < 2 or len(missing) < min_missing:
        # a cache of its own: a single pass fills no in-memory tier
        alone = DecodedImageCache(cache.base, cache.short_side, disk_gb=_gb(cache.disk_budget), writers=1)
        result.decoded, result.errors = _warm_into(alone, missing)
        result.seconds = time.perf_counter() - t0
        return result
    import multiprocessing

    # fork: the children only decode (no torch), and start in milliseconds; elsewhere the platform default
    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    parts = [missing[i:i + chunk] for i in range(0, len(missing), chunk)]
    if on_start is not None:
        on_start(len(missing), processes)
    start = (str(cache.base), cache.short_side, _gb(cache.disk_budget), processes)
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_start_warm_worker, initargs=start) as pool:
        for decoded, errors in pool.map(_warm_chunk, parts):
            result.decoded += decoded
            result.errors += errors
    result.processes = processes
    result.seconds = time.perf_counter() - t0
    return result


def check_images(paths: Sequence[str], loader: Callable[[str], np.ndarray], processes: int, *,
                 on_start: Callable[[int, int], None] | None = None) -> WarmResult:
    """Find every file of ``paths`` that cannot be decoded, reading each one at most once more than a pass would.

    Headers first, on threads (missing, empty and non-image files cost a stat and a few bytes); then
    the pixels of every other file. Through the decoded cache when ``loader`` is one
    (:func:`warm_cache`: the images it holds were decoded before, the rest are decoded into it, so the
    pass that follows finds them there); otherwise every file is decoded once on threads, which is the
    price of naming every bad file before the pass instead of the first one during it.

    Returns:
        What was done; ``errors`` lists every unreadable file with its reason, in the order of ``paths``.
    """
    import time

    from toolkit.imaging.decode import scan_images

    t0 = time.perf_counter()
    unique = list(dict.fromkeys(os.fspath(p) for p in paths))
    bad = dict(scan_images(unique, workers=processes, full_decode=False))
    readable = [p for p in unique if p not in bad]
    if isinstance(loader, DecodedImageCache):
        result = warm_cache(loader, readable, processes, on_start=on_start)
    else:
        result = WarmResult(errors=scan_images(readable, workers=processes, full_decode=True))
    bad.update(result.errors)
    result.errors = [(p, bad[p]) for p in unique if p in bad]
    result.seconds = time.perf_counter() - t0
    return result


def image_loader(short_side: int | None, cache_dir: str | os.PathLike[str] | None = None,
                 ram_mb: float = 0, disk_gb: float | None = None) -> Callable[[str], np.ndarray]:
    """The function every stage reads images with: through the cache at ``short_side``, or a plain decode.

    Args:
        short_side: Cached images are downscaled so their shorter side is this; None reads files directly.
        cache_dir: The cache's folder (default: :func:`default_cache_root`).
        ram_mb: In-memory tier per process (a single pass over the data has no use for it; DataLoader
            workers each hold a copy, so the trainer splits its budget among them).
        disk_gb: The whole cache folder is kept under this many GiB, least recently used entries evicted
            first; None = no limit.
    """
    if short_side is None:
        return load_image_array
    root = Path(cache_dir) if cache_dir else default_cache_root()
    return DecodedImageCache(root, short_side, ram_mb, disk_gb)
