"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

Every byte the archiver writes goes through ``write_fsync``: the one file-write boundary,
where tests inject ``ENOSPC`` / ``EROFS`` / ``EACCES``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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
    """Append one line and fsync before returning, so an acknowledged event is on disk
    (a file created by this append is fsynced into its directory too)."""
    make_dirs(path.parent)
    with open(path, "ab") as fh:
        created = fh.tell() == 0
        write_fsync(fh, line)
    if created:
        fsync_dir(path.parent)


def probe_write(path: Path) -> None:
    """Prove the volume takes durable writes again: write, fsync, remove."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        write_fsync(fh, b"probe")
    path.unlink()
