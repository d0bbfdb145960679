"""Accepted-but-not-yet-snapshotted session states, durable before an event is acked.

The autosave policy defers snapshots, but Dapr must not be told an event succeeded while
it lives only in memory. Each accepted state is appended to the staging log
``{root}/staging/{segment:012d}.log`` and the log is fsynced before ``put`` returns.
Events that arrive together share one write and one fsync (group commit: while one
thread syncs, the others queue their records, and the next of them writes them all), and
an event costs an append instead of a file created, renamed over the last one and its
directory synced.

A record is the length and CRC-32 of its body, then the body: a JSON header line
(tenant, session, version, codec) and the state as before (compressed, AES-GCM sealed
and bound to tenant/session/version when encryption is on). A restarted archiver reads
every segment up to its first incomplete record (a crash mid-append; nothing
acknowledged follows one, since a failed write closes its segment) and keeps each
session's newest version; ``SessionArchive.load`` drops those at or below the newest
archived version or a deletion marker. A segment is deleted once none of the newest
staged states lives in it any more (each was snapshotted, deleted, or staged again in a
later segment); the current one is replaced when it passes ``SEGMENT_BYTES``, after a
failed write, and when its last live session is gone (so a deleted session's history
does not linger). Deleting a segment is not fsynced: one that comes back after a crash
holds only states that the rules above drop again.

Staging files of earlier versions (``{md5(tenant)[:2]}/{tenant}/{session}.pending``) are
read at start and moved into the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from autoglm.archiver import atomic
from autoglm.archiver.atomic import GroupCommit
from autoglm.archiver.codec import Codec, CodecError, CodecInfo, associated_data
from autoglm.archiver.snapshots import SessionState

log = logging.getLogger(__name__)

#: A segment this large is closed and a new one started.
SEGMENT_BYTES = 4 * 1024 * 1024

_PREFIX = struct.Struct(">II")  # body length, CRC-32 of the body
_SUFFIX = ".log"


@dataclass(frozen=True)
class _Staged:
    """One ``put``'s record, on its way into the log."""

    key: str
    version: int
    record: bytes


@dataclass(frozen=True)
class _Found:
    version: int
    segment: int
    header: dict[str, object]
    blob: bytes


class Staging:
    def __init__(self, root: Path, codec: Codec) -> None:
        self.dir = root / "staging"
        self.codec = codec
        self._cv = threading.Condition()
        self._commit: GroupCommit[_Staged] = GroupCommit(self._cv)
        self._written_to = 0  # the segment the batch being committed went to
        self._segment = 0  # the current segment's number (its file may not exist yet)
        self._fh: BinaryIO | None = None
        self._size = 0
        #: session key -> (segment, version) of its newest durable staged state
        self._where: dict[str, tuple[int, int]] = {}
        #: segment -> keys whose newest staged state it holds
        self._live: dict[int, set[str]] = {}
        #: segments with a record that could not be read: left for an operator
        self._pinned: set[int] = set()

    # -- writing -----------------------------------------------------------------------
    def put(self, state: SessionState) -> None:
        """Append ``state`` and return once it is durable (``OSError`` if it is not)."""
        blob, info = self.codec.encode(state.encoded, state.aad("staging"))
        header = {
            "tenant": state.tenant,
            "session_id": state.session_id,
            "version": state.version,
            "codec": info.to_json(),
        }
        body = json.dumps(header, separators=(",", ":")).encode() + b"\n" + blob
        record = _PREFIX.pack(len(body), zlib.crc32(body)) + body
        self._commit.submit(_Staged(state.key, state.version, record), self._write, self._written)

    def _write(self, batch: list[_Staged]) -> None:
        self._written_to = self._append(b"".join(s.record for s in batch))

    def _written(self, batch: list[_Staged]) -> None:
        """The batch is durable in segment ``_written_to`` (under ``_cv``)."""
        for staged in batch:
            self._forget(staged.key)
            self._where[staged.key] = (self._written_to, staged.version)
            self._live.setdefault(self._written_to, set()).add(staged.key)
        if self._size >= SEGMENT_BYTES:
            self._close_current()

    def _append(self, data: bytes) -> int:
        """Write ``data`` at the end of the current segment and fsync it (only the
        batch's writer gets here). A failure closes the segment: its tail may be torn,
        and no acknowledged record may follow a torn one."""
        try:
            if self._fh is None:
                atomic.make_dirs(self.dir)
                self._fh = open(self._path(self._segment), "xb")  # noqa: SIM115 (kept open)
                self._size = 0
                # The new file's entry is durable before any record in it is acknowledged.
                atomic.fsync_dir(self.dir)
            atomic.write_fsync(self._fh, data)
        except OSError:
            with self._cv:
                self._close_current()
            raise
        self._size += len(data)
        return self._segment

    def _close_current(self) -> None:
        """Start the next segment at the next write; drop this one if nothing lives in
        it. Caller holds ``_cv``."""
        if self._fh is not None:
            # A failed flush of a segment already given up on changes nothing.
            with contextlib.suppress(OSError):
                self._fh.close()
        self._fh = None
        closed, self._segment = self._segment, self._segment + 1
        self._maybe_drop(closed)

    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:012d}{_SUFFIX}"

    # -- forgetting --------------------------------------------------------------------
    def remove(self, state: SessionState) -> None:
        """Forget the staged state once a snapshot of its version is durable."""
        with self._cv:
            where = self._where.get(state.key)
            if where is not None and where[1] <= state.version:
                self._forget(state.key)

    def discard(self, tenant: str, session_id: str) -> None:
        """Forget the session's staged state, whichever version it is (deletion: the
        deletion marker is durable first, so a start never reloads it)."""
        with self._cv:
            self._forget(f"{tenant}/{session_id}")

    def _forget(self, key: str) -> None:
        """Caller holds ``_cv``."""
        where = self._where.pop(key, None)
        if where is None:
            return
        keys = self._live.get(where[0])
        if keys is not None:
            keys.discard(key)
        self._maybe_drop(where[0])

    def _maybe_drop(self, segment: int) -> None:
        """Delete ``segment`` if no newest staged state lives in it. The current one
        goes too when it is empty of live states and nobody is writing to it."""
        if self._live.get(segment) or segment in self._pinned:
            return
        if segment == self._segment:
            if self._fh is None or self._commit.writing:
                return
            self._close_current()  # comes back here for the closed segment
            return
        self._live.pop(segment, None)
        try:
            self._path(segment).unlink(missing_ok=True)
        except OSError as exc:  # left for the next start, which drops it again
            log.warning("staging segment not removed", extra={"reason": str(exc)})

    def staged(self) -> dict[str, int]:
        """Session key -> version of every state staged and not yet snapshotted."""
        with self._cv:
            return {key: version for key, (_, version) in self._where.items()}

    # -- start-up ----------------------------------------------------------------------
    def load_all(self) -> Iterator[SessionState]:
        """Every session's newest staged state (call once, before any ``put``); an
        unreadable record is logged and its segment left for an operator."""
        found: dict[str, _Found] = {}
        segments = sorted(
            int(p.name.removesuffix(_SUFFIX))
            for p in self.dir.glob(f"*{_SUFFIX}")
            if p.name.removesuffix(_SUFFIX).isdigit()
        )
        for segment in segments:
            for header, blob in self._records(segment):
                key = f"{header['tenant']}/{header['session_id']}"
                version = int(str(header["version"]))
                if key not in found or version > found[key].version:
                    found[key] = _Found(version, segment, header, blob)
        self._segment = segments[-1] + 1 if segments else 0
        states: list[SessionState] = []
        for key, item in found.items():
            state = self._open(item.header, item.blob)
            if state is None:
                self._pinned.add(item.segment)
                continue
            self._where[key] = (item.segment, item.version)
            self._live.setdefault(item.segment, set()).add(key)
            states.append(state)
        for segment in segments:
            self._maybe_drop(segment)
        yield from states
        yield from self._legacy({s.key: s.version for s in states})

    def _records(self, segment: int) -> Iterator[tuple[dict[str, object], bytes]]:
        data = self._path(segment).read_bytes()
        offset = 0
        while offset < len(data):
            if len(data) - offset < _PREFIX.size:
                break
            length, crc = _PREFIX.unpack_from(data, offset)
            body = data[offset + _PREFIX.size : offset + _PREFIX.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break
            offset += _PREFIX.size + length
            head, _, blob = body.partition(b"\n")
            try:
                header = json.loads(head)
                if not isinstance(header, dict) or not all(
                    isinstance(header.get(k), t)
                    for k, t in (("tenant", str), ("session_id", str), ("version", int))
                ):
                    raise ValueError("a staging record's header names no session version")
            except ValueError as exc:
                log.error("unreadable staging record", extra={"reason": str(exc)})
                self._pinned.add(segment)
                continue
            yield header, blob
        if offset < len(data):
            # An append cut short by a crash (or a failed write): never acknowledged.
            log.warning(
                "staging segment ends in an incomplete record",
                extra={"segment": segment, "bytes": len(data) - offset},
            )

    def _open(self, header: dict[str, object], blob: bytes) -> SessionState | None:
        tenant, session_id = str(header["tenant"]), str(header["session_id"])
        try:
            aad = associated_data("staging", tenant, session_id, int(str(header["version"])))
            info = header["codec"]
            if not isinstance(info, dict):
                raise ValueError("codec is not an object")
            plain = self.codec.decode(blob, CodecInfo.from_json(info), aad)
            return SessionState.from_json(json.loads(plain))
        except (ValueError, KeyError, CodecError) as exc:
            log.error(
                "unreadable staged session",
                extra={"session": f"{tenant}/{session_id}", "reason": str(exc)},
            )
            return None

    def _legacy(self, known: dict[str, int]) -> Iterator[SessionState]:
        """Staging files of earlier versions: moved into the log (then removed), unless
        the log holds the same or a newer version."""
        for path in sorted(self.dir.glob("*/*/*.pending")):
            try:
                header, blob = path.read_bytes().split(b"\n", 1)
                meta = json.loads(header)
                tenant, session_id = path.parent.name, path.name.removesuffix(".pending")
                aad = associated_data("staging", tenant, session_id, meta["version"])
                plain = self.codec.decode(blob, CodecInfo.from_json(meta["codec"]), aad)
                state = SessionState.from_json(json.loads(plain))
            except (ValueError, KeyError, CodecError) as exc:
                log.error(
                    "unreadable staged session", extra={"path": str(path), "reason": str(exc)}
                )
                continue
            if state.version > known.get(state.key, 0):
                try:
                    self.put(state)
                except OSError as exc:
                    # Still durable in its old file; moved at a later start.
                    log.error("staged session not moved", extra={"reason": str(exc)})
                    yield state
                    continue
                yield state
            path.unlink(missing_ok=True)
