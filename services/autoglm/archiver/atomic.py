"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

Every byte the archiver writes goes through ``write_fsync``: the one file-write boundary,
where tests inject ``ENOSPC`` / ``EROFS`` / ``EACCES``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

Item = TypeVar("Item")

#: Files a ``GroupAppender`` keeps a commit queue for before it forgets idle ones.
_APPENDERS = 1024


def write_fsync(fh: BinaryIO, data: bytes) -> None:
    """Write ``data`` and force it to stable storage."""
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``mkdir -p path``, durably: each directory created here is fsynced into its
    parent, so a file made durable inside it cannot vanish with its directory entry."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return  # another writer made it (and makes it durable)
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file, fsync, rename and directory fsync."""
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write_fsync(fh, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a hidden temp directory beside ``path``; on success it is fsynced and renamed
    to ``path`` in one step, so ``path`` either does not exist or is complete. Returns
    without renaming when ``path`` appeared meanwhile (a concurrent writer of the same
    immutable content)."""
    make_dirs(path.parent)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        if not path.exists():
            os.rename(tmp, path)
            fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_file(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``, fsynced (inside an ``atomic_dir``)."""
    with open(path, "wb") as fh:
        write_fsync(fh, data)


def write_at(fh: BinaryIO, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of the open file, dropping anything after it (bytes a
    crashed attempt wrote past the last acknowledged offset), and fsync."""
    fh.truncate(offset)
    fh.seek(offset)
    write_fsync(fh, data)


def durable_append(path: Path, line: bytes) -> None:
    """Append one line (or several) and fsync before returning, so an acknowledged event
    is on disk (a file created by this append is fsynced into its directory too). A
    failed append is cut off again where possible, so that the next one does not
    continue a torn line."""
    make_dirs(path.parent)
    with open(path, "ab") as fh:
        start = fh.tell()
        try:
            write_fsync(fh, line)
        except OSError:
            with contextlib.suppress(OSError):
                fh.truncate(start)
            raise
    if start == 0:
        fsync_dir(path.parent)


@dataclass(eq=False)
class _Waiter(Generic[Item]):
    item: Item
    done: bool = False
    error: OSError | None = None


class GroupCommit(Generic[Item]):
    """Group commit of durable writes: items submitted while a write is in progress
    queue up, and the next submitter writes all of them at once (one write, one fsync).
    Each ``submit`` returns once the write carrying its item succeeded, or raises that
    write's ``OSError``. ``cv`` is the condition the state it guards shares."""

    def __init__(self, cv: threading.Condition | None = None) -> None:
        self.cv = cv or threading.Condition()
        self._queue: list[_Waiter[Item]] = []
        #: A write is in progress (read under ``cv``).
        self.writing = False

    def submit(
        self,
        item: Item,
        write: Callable[[list[Item]], None],
        written: Callable[[list[Item]], None] | None = None,
    ) -> None:
        """Have ``item`` written by ``write(batch)`` (outside ``cv``); ``written(batch)``
        runs under ``cv`` after a successful write, before anyone returns."""
        mine = _Waiter(item)
        with self.cv:
            self._queue.append(mine)
            while not mine.done and self.writing:
                self.cv.wait()
            if not mine.done:
                # Nobody is writing: this thread writes everything queued, its own too.
                self.writing = True
                batch, self._queue = self._queue, []
        if not mine.done:
            self._write(batch, write, written)
        if mine.error is not None:
            raise mine.error

    def _write(
        self,
        batch: list[_Waiter[Item]],
        write: Callable[[list[Item]], None],
        written: Callable[[list[Item]], None] | None,
    ) -> None:
        error: OSError | None = None
        try:
            write([w.item for w in batch])
        except OSError as exc:
            error = exc
        with self.cv:
            for w in batch:
                w.done = True
                # Each waiter raises its own exception object (same errno).
                w.error = None if error is None else OSError(error.errno, error.strerror)
            if error is None and written is not None:
                written([w.item for w in batch])
            self.writing = False
            self.cv.notify_all()

    @property
    def idle(self) -> bool:
        """Nothing written or waiting (read under ``cv``)."""
        return not self.writing and not self._queue


class GroupAppender:
    """``durable_append`` for many threads at once, with a ``GroupCommit`` per file: lines
    for one file that arrive while it is being written share the next write and fsync.
    The file is opened per write, never held (retention may compress and remove a
    finished day's file)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._files: dict[Path, GroupCommit[bytes]] = {}

    def append(self, path: Path, line: bytes) -> None:
        with self._cv:
            commit = self._files.get(path)
            if commit is None:
                if len(self._files) >= _APPENDERS:  # earlier days' files, done with
                    self._files = {p: c for p, c in self._files.items() if not c.idle}
                commit = self._files[path] = GroupCommit(self._cv)
        commit.submit(line, lambda lines: durable_append(path, b"".join(lines)))


def probe_write(path: Path) -> None:
    """Prove the volume takes durable writes again: write, fsync, remove."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        write_fsync(fh, b"probe")
    path.unlink()
