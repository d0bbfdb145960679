"""Sessions in the Dapr state store, with first-write-wins updates and archive restore.

Every write carries the ETag read with the record, so two concurrent turns on one
session cannot both land: the second gets ``ConflictError`` (409) and nothing is lost.
A chat turn opens the session with ``open_turn``, which first claims it in this process
(``turns``): a second turn of it here while one runs is that 409 at once, instead of a
generation and a write sure to lose the ETag race. A session whose last turn this process
wrote is opened from ``cache`` without a read (``autoglm.gateway.sessions.cache``); if
its write is refused because the session changed since, the turn raises
``StaleSessionError`` and its caller reads the session and generates again.
Each change is published to ``session.snapshots`` for the archiver's autosave. A
record missing from the state store (say Redis was flushed) is restored from the
archiver's newest snapshot on read; a deletion is published to the same topic first, so
the archive forgets the session and a lost state store cannot bring it back. An admin
may restore a chosen archived version over the current history (``restore_version``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoglm.core.archive_protocol import RestoreReply, RestoreRequest
from autoglm.core.contracts import RESTORE
from autoglm.core.errors import ConflictError
from autoglm.core.schemas import ChatMessage, SnapshotEvent
from autoglm.gateway.records import TOMBSTONE, ArchivedRecords, known_id
from autoglm.gateway.sessions.cache import SessionCache
from autoglm.gateway.sessions.protocol import CreateSessionRequest, SessionRecord
from autoglm.gateway.sessions.turns import TurnClaims

log = logging.getLogger(__name__)

#: How long a claimed turn may hold its session if it is never released: the gateway's
#: default request timeout (120 s) plus margin.
TURN_HOLD_S = 150.0


class StaleSessionError(ConflictError):
    """A turn opened from the cache lost its write: the session had changed before the
    turn began (another process wrote it). The turn's caller reads the session again
    (``SessionTurn.reread``) and redoes the turn; uncaught, it is the usual 409."""


@dataclass
class SessionTurn:
    """A session opened for one chat turn: the record and ETag it read (or, ``cached``,
    that this process wrote last), its claim on the session (``close`` releases it; the
    turn's owner must call it however it ends)."""

    store: SessionStore
    record: SessionRecord
    etag: str | None
    close: Callable[[], None]
    cached: bool = False

    def append(self, messages: list[ChatMessage], *, flush: bool = False) -> SessionRecord:
        """Append the turn's messages with the ETag read when it opened (a 409 if the
        session changed since: another replica, a delete or a restore;
        ``StaleSessionError`` if it was opened from the cache and had changed before)."""
        return self.store.append(self.record, self.etag, messages, flush=flush, cached=self.cached)

    def reread(self) -> None:
        """Read the session from the state store (still under this turn's claim)."""
        self.record, self.etag = self.store.get(self.record.tenant, self.record.id)
        self.cached = False


@dataclass
class SessionStore(ArchivedRecords):
    kind = "session"
    param = "session_id"

    turns: TurnClaims = field(default_factory=lambda: TurnClaims(TURN_HOLD_S))
    #: The sessions this process wrote last (off unless sized: see its module).
    cache: SessionCache = field(default_factory=lambda: SessionCache(0))

    def create(self, tenant: str, request: CreateSessionRequest) -> SessionRecord:
        record = SessionRecord(
            tenant=tenant, model=request.model, messages=request.messages, metadata=request.metadata
        )
        if request.id:
            record.id = request.id
            # A create-only write to an existing key is not an ETag error to daprd: it is
            # retried and counted four times towards the state store's breaker, which
            # every tenant shares. So a client's taken id is refused without the write.
            if self.sidecar.get_state(self.key(tenant, record.id)) is not None:
                raise self._taken(record.id)
        key = self.key(tenant, record.id)
        try:
            self.sidecar.save_state(key, record.to_json(), create_only=True)
        except ConflictError:
            raise self._taken(record.id) from None
        self.cache.written(key, record, None)
        self._snapshot(record)
        return record

    @staticmethod
    def _taken(session_id: str) -> ConflictError:
        return ConflictError(f"session {session_id!r} already exists", param="id")

    def get(self, tenant: str, session_id: str) -> tuple[SessionRecord, str | None]:
        """The record and its ETag; restored from the archive when the store lost it."""
        entry = self.read(tenant, session_id)
        return SessionRecord.model_validate(entry.value), entry.etag

    def open_turn(self, tenant: str, session_id: str, *, cached: bool = True) -> SessionTurn:
        """Claim the session for a turn in this process (a 409 while another turn of it
        runs here), then read it, or with ``cached`` take what this process wrote last
        if it has it. After the claim, so a turn that follows another here starts from
        what that one wrote."""
        key = self.key(tenant, known_id(session_id, self.kind, self.param))
        release = self.turns.claim(key, session_id)
        try:
            hit = self.cache.get(key) if cached else None
            if hit is not None:
                return SessionTurn(self, hit[0], hit[1], release, cached=True)
            record, etag = self.get(tenant, session_id)
        except BaseException:
            release()
            raise
        return SessionTurn(self, record, etag, release)

    def _from_archive(self, tenant: str, rid: str, reply: RestoreReply) -> dict[str, Any]:
        if reply.record is not None:
            raise self.not_found(rid)  # an archived response, not a session
        log.info("session restored from archive", extra={"session_id": rid})
        record = SessionRecord(
            id=rid, tenant=tenant, version=reply.version, model=reply.model, messages=reply.messages
        )
        return record.to_json()

    def append(
        self,
        record: SessionRecord,
        etag: str | None,
        messages: list[ChatMessage],
        *,
        flush: bool = False,
        cached: bool = False,
    ) -> SessionRecord:
        """Append ``messages`` if nobody changed the session since it was read (``cached``:
        since this process wrote ``record``)."""
        updated = record.model_copy(
            update={
                "messages": [*record.messages, *messages],
                "version": record.version + 1,
                "updated": int(time.time()),
            }
        )
        key = self.key(record.tenant, record.id)
        value = updated.to_json()
        # Until this write lands the cached entry is not the newest (if the write fails it
        # may have landed or not): the next turn reads.
        self.cache.forget(key)
        what = " while this one ran; read it again and retry"
        try:
            self.save(record.tenant, record.id, value, etag, what)
        except ConflictError:
            if not cached:
                raise
            etag = self._recheck(record)
            self.save(record.tenant, record.id, value, etag, what)
        self.cache.written(key, updated, etag)
        self._snapshot(updated, flush=flush)
        return updated

    def _recheck(self, cached: SessionRecord) -> str | None:
        """A write over a cached record was refused: the ETag to write with if the stored
        record is still the cached one (only the ETag was not what the cache assumed, or
        the store lost the session and it came back from the archive as it was);
        ``StaleSessionError`` if the session is not what this process wrote last, and a
        404 once it was deleted."""
        # Restores a session the store lost (a Redis flush), as any turn's read does.
        entry = self.read(cached.tenant, cached.id)
        stored = SessionRecord.model_validate(entry.value)
        if stored.version == cached.version and stored.messages == cached.messages:
            return entry.etag
        if stored.version >= cached.version:
            self.cache.turn_off("a session this process wrote last was changed by another writer")
        # else: the store lost the session and the archive had an older version of it.
        raise StaleSessionError(
            f"session {cached.id!r} was changed by another request before this turn",
            code="session_conflict",
        )

    def delete(self, tenant: str, session_id: str) -> None:
        # 404 for unknown ids, as for any other read.
        record, etag = self.get(tenant, session_id)
        self.cache.forget(self.key(tenant, session_id))
        self.delete_record(tenant, session_id, record.version, etag, "; read it and retry")

    def restore_version(self, tenant: str, session_id: str, version: int) -> SessionRecord:
        """Make archived ``version`` the session's current history (admin)."""
        key = self.key(tenant, known_id(session_id, self.kind, self.param))
        self.cache.forget(key)
        entry = self.sidecar.get_state(key)
        current = (
            SessionRecord.model_validate(entry.value)
            if entry is not None and entry.value != TOMBSTONE
            else None
        )
        # The archiver's own 404 (no such version) goes to the client as it is.
        request = RestoreRequest(tenant=tenant, session_id=session_id, version=version)
        snap = self.mesh.call(RESTORE, request)
        # The archiver versions optimistically (archiver/versions.py): an event at or
        # below its newest version is a duplicate when its history is a prefix of the
        # newest one (as an older version's is) and a conflict otherwise, so it would be
        # ignored or dead-lettered. The restore therefore goes above both the state
        # store's version and the archive's newest (a merge can put that one higher),
        # and in-flight events of the replaced history become stale writes it refuses.
        newest = max(current.version if current else 0, snap.latest_version or snap.version)
        now = int(time.time())
        record = SessionRecord(
            id=session_id,
            tenant=tenant,
            created=current.created if current else now,
            updated=now,
            version=newest + 1,
            model=snap.model or (current.model if current else None),
            messages=snap.messages,
            metadata=current.metadata if current else {},
        )
        try:
            # With the ETag read above (state.redis refuses un-ETagged writes to keys
            # created first-write), or create-only if there was no record.
            self.sidecar.save_state(
                key,
                record.to_json(),
                etag=entry.etag if entry is not None else None,
                create_only=entry is None,
            )
        except ConflictError:
            raise self.conflict(session_id, " during the restore; retry") from None
        log.info(
            "session version restored",
            extra={"session_id": session_id, "from_version": version, "version": record.version},
        )
        # Flushed: an admin restore becomes an archived version at once, not on autosave.
        self._snapshot(record, flush=True)
        return record

    def _snapshot(self, record: SessionRecord, flush: bool = False) -> None:
        history = record.model_dump(include={"tenant", "version", "messages", "model"})
        self.publish_snapshot(SnapshotEvent(session_id=record.id, flush=flush, **history))
