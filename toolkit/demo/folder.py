"""The demo's output folder: it records what the demo wrote, so a second demo replaces that and nothing else.

A folder that holds anything without the record is refused: it may be the user's, and the demo never
deletes what it did not write. Files added to a demo folder by hand stay through any number of reruns.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.errors import UsageError
from toolkit.store import atomic_write_json, read_json

__all__ = ["RECORD", "DemoFolder"]

#: The record of what the demo wrote, relative to the folder (hidden: it is bookkeeping, not output).
RECORD = ".clsctl-demo.json"


class DemoFolder:
    """An output folder the demo owns part of; :meth:`prepare` makes one ready for a new demo.

    Args:
        path: The folder.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written: list[str] = []

    @classmethod
    def prepare(cls, path: str | os.PathLike[str]) -> DemoFolder:
        """Create the folder, or empty what an earlier demo wrote into it.

        Raises:
            UsageError: The path is a file, or a folder with files the demo did not write there.
        """
        folder = cls(Path(path).absolute())
        if folder.path.exists() and not folder.path.is_dir():
            raise UsageError(f"--out {path} is a file", "pass a folder (new, empty, or an earlier demo's)")
        record = folder.path / RECORD
        if record.is_file():
            folder._remove_earlier(record)
        elif folder.path.is_dir() and any(folder.path.iterdir()):
            raise UsageError(f"--out {path} already holds files that clsctl demo did not write",
                             "pass --out with a new or empty folder (or the folder of an earlier demo)")
        folder.path.mkdir(parents=True, exist_ok=True)
        folder._save()
        return folder

    def _remove_earlier(self, record: Path) -> None:
        try:
            entries = read_json(record)["written"]
        except Exception as exc:  # a record that cannot be trusted cannot say what is safe to delete
            raise UsageError(f"--out {self.path}: {RECORD} is unreadable ({exc})",
                             "pass --out with a new or empty folder") from exc
        for entry in entries:
            target = self._inside(str(entry))
            if target is None:
                continue  # a record edited to point outside the folder deletes nothing
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
        for parent in sorted({self.path / Path(str(e)).parts[0] for e in entries if len(Path(str(e)).parts) > 1}):
            if parent.is_dir() and not parent.is_symlink() and not any(parent.iterdir()):
                parent.rmdir()

    def _inside(self, entry: str) -> Path | None:
        rel = Path(entry)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            return None
        target = self.path / rel
        # Only the entry itself may be a link; a link in a folder above it could point anywhere.
        if not target.parent.resolve().is_relative_to(self.path.resolve()):
            return None
        return target

    def _save(self) -> None:
        atomic_write_json(self.path / RECORD, {"written": self.written})

    def own(self, *paths: Path) -> None:
        """Record paths inside the folder as the demo's (before writing them, so a crash leaves them recorded)."""
        for p in paths:
            rel = Path(p).absolute().relative_to(self.path).as_posix()
            if rel not in self.written:
                self.written.append(rel)
        self._save()

    @contextmanager
    def new_entries(self, folder: Path) -> Iterator[None]:
        """Record whatever appears in ``folder`` (the runs folder) during the block, even when it fails."""
        before = set(os.listdir(folder)) if folder.is_dir() else set()
        try:
            yield
        finally:
            after = set(os.listdir(folder)) if folder.is_dir() else set()
            self.own(*(folder / name for name in sorted(after - before)))
