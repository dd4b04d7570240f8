"""Crash-safe file writes: a file is either the old version or the whole new one.

Every writer here puts its bytes in a temporary file next to the target (same folder, so the
final ``os.replace`` never crosses a filesystem and stays atomic), fsyncs it, and only then
swaps it into place. A crash at any moment leaves the previous content intact; at worst a
hidden ``.<name>.tmp-<pid>-<rand>`` file stays behind, which no reader ever looks at.

CSV logs are the exception: they grow by appending. ``append_csv_row`` keeps them sound by
writing each row as one ``os.write`` on an ``O_APPEND`` descriptor under an exclusive lock,
by cutting back a row that failed halfway (a full disk), and by cutting away a torn last line
(from a crash mid-write) before appending again.

A write that fails names the file it was writing (``OSError.filename``), and :func:`no_room` tells a
write that found no room (full disk, quota, ``ulimit -f``) from any other failure.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import io
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

try:  # POSIX only; on Windows appends go unlocked (one writer per run is the rule anyway).
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "append_csv_row",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "no_room",
    "read_json",
    "temp_file_pid",
    "to_jsonable",
]

StrPath = str | os.PathLike[str]

# Array-like libraries whose objects know how to become plain Python values via ``tolist()``.
_ARRAY_MODULES = frozenset({"numpy", "torch", "pandas"})
_CHUNK = 64 * 1024


# Errors that mean there was no room to write: a full disk, an exhausted quota, the process's file size limit.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Libraries that write for us (safetensors, torch.save) raise their own types, with the OS error in the text.
_NO_ROOM_TEXT = re.compile(r"No space left on device|Disk quota exceeded|File too large|os error (\d+)")
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


def _temp_path(target: Path) -> Path:
    # Hidden (leading dot) so globs like ``*.json`` never pick up a half-written file, and
    # pid + random so two writers of the same target never share a temporary file.
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def temp_file_pid(name: str) -> int | None:
    """The id of the process that wrote the temporary file ``name`` (one of :func:`atomic_writer`'s), else None."""
    found = _TEMP_NAME.match(name)
    return int(found.group(1)) if found else None


def no_room(exc: BaseException) -> tuple[int, str | None] | None:
    """Whether ``exc``, or an exception it came from, says a write found no room.

    Returns:
        ``(errno, file)`` for ENOSPC (disk full), EDQUOT (quota) or EFBIG (``ulimit -f``); the file is
        None when the error does not name it. None for any other error.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_ROOM:
            return current.errno, current.filename if isinstance(current.filename, str) else None
        text = str(current)
        found = _NO_ROOM_TEXT.search(text)
        if found:
            code = int(found.group(1)) if found.group(1) else None
            if code is None:
                code = (errno.ENOSPC if "No space" in text else errno.EDQUOT if "quota" in text else errno.EFBIG)
            if code in _NO_ROOM:
                return code, None
        current = current.__cause__ or current.__context__
    return None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; without it a power cut can forget the new name.
    # Not possible on Windows, and harmless to skip where the filesystem refuses.
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(
    path: StrPath,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` only when the block exits cleanly.

    The parent folder is created if needed. On an exception (including
    ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left untouched.

    Args:
        path: The file to (re)write.
        mode: ``"wb"`` for bytes, ``"w"`` or ``"wt"`` for text.
        encoding: Text encoding; UTF-8 when not given. Ignored in binary mode.
        newline: Passed to ``open`` in text mode (``""`` writes line endings verbatim).

    Yields:
        A writable file object.

    Raises:
        ValueError: If ``mode`` is not a write mode listed above.
    """
    if mode not in ("wb", "w", "wt"):
        raise ValueError(f"atomic_writer mode must be 'wb', 'w' or 'wt', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(target)
    # 0o666 lets the umask decide permissions, as a plain open() would (mkstemp forces 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if mode == "wb":
            handle: IO[Any] = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = str(target)  # a failed write() names no file; whoever reads the error needs it
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically.

    Args:
        path: The file to write.
        data: Its full new content.
    """
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: StrPath, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically, line endings written exactly as given.

    Args:
        path: The file to write.
        text: Its full new content.
        encoding: Text encoding.
    """
    atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: turn a value JSON cannot encode into one it can.

    numpy/torch scalars and arrays become Python numbers and (nested) lists, paths become
    strings, dates ISO-8601 text, sets sorted lists; anything else its ``str``.

    Args:
        obj: The value ``json`` gave up on.

    Returns:
        A JSON-encodable stand-in.
    """
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, _dt.datetime | _dt.date | _dt.time):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    # Checked by module name so that numpy/torch never get imported just to test a type.
    if type(obj).__module__.split(".")[0] in _ARRAY_MODULES:
        tolist = getattr(obj, "tolist", None)
        if callable(tolist):
            # numpy scalars' tolist() gives the Python scalar, arrays nested lists.
            return tolist()
        item = getattr(obj, "item", None)
        if callable(item):
            return item()
    return str(obj)


def atomic_write_json(path: StrPath, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically.

    Keys keep their insertion order; non-ASCII text is written as is; numpy scalars and
    arrays, paths and dates are converted (see :func:`to_jsonable`).

    Args:
        path: The file to write.
        obj: A JSON-like value.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=to_jsonable)
    atomic_write_text(path, text + "\n")


def read_json(path: StrPath) -> Any:
    """Read a UTF-8 JSON file.

    Args:
        path: The file to read.

    Returns:
        The decoded value.

    Raises:
        FileNotFoundError: If the file does not exist.
        json.JSONDecodeError: If it is not valid JSON.
    """
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# --------------------------------------------------------------------------- CSV appends


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        # One record per physical line is what makes torn-line repair possible, so a value
        # may not carry its own line break.
        return value.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    if type(value).__module__.split(".")[0] in _ARRAY_MODULES:
        item = getattr(value, "item", None)
        if callable(item):
            with contextlib.suppress(ValueError, RuntimeError):
                return item()  # a 0-d tensor would otherwise print as "tensor(0.5)"
    return value


def _format_line(cells: list[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_cell(c) for c in cells])
    return buffer.getvalue().encode("utf-8")


def _write_all(fd: int, data: bytes) -> None:
    # One os.write is the whole line on a regular file; the loop only matters if the kernel
    # ever returns a short count (full disk, exotic filesystems).
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def _is_current(fd: int, target: Path) -> bool:
    # Another writer may have replaced the file (column rewrite) while we waited for the
    # lock; then our descriptor points at an orphaned inode and we must reopen.
    opened = os.fstat(fd)
    try:
        now = os.stat(target)
    except FileNotFoundError:
        return False
    return (opened.st_ino, opened.st_dev) == (now.st_ino, now.st_dev)


def _repair_torn_tail(fd: int, size: int) -> int:
    """Cut the file back to its last newline; return the new size."""
    os.lseek(fd, size - 1, os.SEEK_SET)
    if os.read(fd, 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        os.lseek(fd, start, os.SEEK_SET)
        chunk = os.read(fd, end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            new_size = start + cut + 1
            break
        end = start
    else:
        new_size = 0  # not even the header was complete
    os.ftruncate(fd, new_size)
    return new_size


def _read_header(fd: int) -> list[str]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            break
        data += chunk
    first = data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")
    return next(csv.reader([first]), [])


def _read_all(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    parts = []
    while chunk := os.read(fd, 1024 * 1024):
        parts.append(chunk)
    return b"".join(parts).decode("utf-8")


def _rewrite_with_columns(fd: int, target: Path, columns: list[str], row: Mapping[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO(_read_all(fd), newline="")))
    with atomic_writer(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="", extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        writer.writerow({k: _cell(v) for k, v in row.items()})


def append_csv_row(path: StrPath, row: Mapping[str, Any]) -> None:
    """Append one row to a CSV file that has a header, never leaving a torn line.

    The first row creates the file and its header (columns in the row's key order). A row
    with a column the file does not have yet makes the whole file be rewritten atomically
    with the union of columns; older rows get empty cells. Missing columns are left empty.
    ``None`` is written as an empty cell; line breaks inside text become spaces.

    Safe against crashes (a torn last line is cut away before the next append) and against
    several processes appending to the same file at once (an exclusive ``flock`` on POSIX).

    Args:
        path: The CSV file.
        row: Column name to value.

    Raises:
        ValueError: If ``row`` is empty.
    """
    if not row:
        raise ValueError("append_csv_row needs at least one column")
    values = {str(k): v for k, v in row.items()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0)
    while True:
        fd = os.open(target, flags, 0o666)
        try:
            _lock(fd)
            if _is_current(fd, target):
                _append_locked(fd, target, values)
                return
        finally:
            os.close(fd)  # also releases the lock


def _append_locked(fd: int, target: Path, values: dict[str, Any]) -> None:
    size = os.fstat(fd).st_size
    if size:
        size = _repair_torn_tail(fd, size)
    if not size:
        header = list(values)
        data = _format_line(header) + _format_line([values[k] for k in header])
    else:
        header = _read_header(fd)
        new_columns = [k for k in values if k not in header]
        if new_columns:
            _rewrite_with_columns(fd, target, header + new_columns, values)
            return
        data = _format_line([values.get(k) for k in header])
    try:
        _write_all(fd, data)
    except OSError as exc:
        # A full disk can take half a row: cut it off now rather than leave a torn line for readers
        # until the next append repairs it (which may never come).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        if exc.errno is not None and exc.filename is None:
            exc.filename = str(target)
        raise
