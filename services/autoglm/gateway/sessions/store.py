"""Sessions in the Dapr state store, with first-write-wins updates and archive restore.

Every write carries the ETag read with the record, so two concurrent turns on one
session cannot both land: the second gets ``ConflictError`` (409) and nothing is lost.
Each change is published to ``session.snapshots`` for the archiver's autosave. A
record missing from the state store (say Redis was flushed) is restored from the
archiver's newest snapshot on read; a deletion is published to the same topic first, so
the archive forgets the session and a lost state store cannot bring it back. An admin
may restore a chosen archived version over the current history (``restore_version``).
"""

from __future__ import annotations

import contextlib
import logging
import time

from autoglm.core.archive_protocol import RESTORE, RestoreReply, RestoreRequest
from autoglm.core.errors import AutoGLMError, ConflictError, NotFoundError
from autoglm.core.schemas import SNAPSHOTS_TOPIC, ChatMessage, SnapshotEvent, is_safe_id
from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.sessions.protocol import CreateSessionRequest, SessionRecord

log = logging.getLogger(__name__)

#: Written in place of a deleted session so a read does not resurrect it from the archive.
_TOMBSTONE = {"deleted": True}


def session_key(tenant: str, session_id: str) -> str:
    return f"session:{tenant}:{session_id}"


class SessionStore:
    def __init__(self, sidecar: SidecarAPI, *, archiver_app_id: str = "archiver") -> None:
        self.sidecar = sidecar
        self.archiver_app_id = archiver_app_id

    def create(self, tenant: str, request: CreateSessionRequest) -> SessionRecord:
        record = SessionRecord(
            tenant=tenant, model=request.model, messages=request.messages, metadata=request.metadata
        )
        if request.id:
            record.id = request.id
        try:
            self.sidecar.save_state(
                session_key(tenant, record.id), record.to_json(), create_only=True
            )
        except ConflictError:
            raise ConflictError(f"session {record.id!r} already exists", param="id") from None
        self._snapshot(record)
        return record

    def get(self, tenant: str, session_id: str) -> tuple[SessionRecord, str | None]:
        """The record and its ETag; restored from the archive when the store lost it."""
        if not is_safe_id(session_id):
            raise self._not_found(session_id)  # no session can have that id
        entry = self.sidecar.get_state(session_key(tenant, session_id))
        if entry is not None:
            if entry.value == _TOMBSTONE:
                raise self._not_found(session_id)
            return SessionRecord.model_validate(entry.value), entry.etag
        record = self._restore(tenant, session_id)
        # ConflictError: another replica restored it first; read theirs below.
        with contextlib.suppress(ConflictError):
            self.sidecar.save_state(
                session_key(tenant, session_id), record.to_json(), create_only=True
            )
        entry = self.sidecar.get_state(session_key(tenant, session_id))
        if entry is None or entry.value == _TOMBSTONE:
            raise self._not_found(session_id)
        return SessionRecord.model_validate(entry.value), entry.etag

    def append(
        self,
        record: SessionRecord,
        etag: str | None,
        messages: list[ChatMessage],
        *,
        flush: bool = False,
    ) -> SessionRecord:
        """Append ``messages`` if nobody changed the session since it was read."""
        updated = record.model_copy(
            update={
                "messages": [*record.messages, *messages],
                "version": record.version + 1,
                "updated": int(time.time()),
            }
        )
        try:
            self.sidecar.save_state(
                session_key(record.tenant, record.id), updated.to_json(), etag=etag
            )
        except ConflictError:
            raise ConflictError(
                f"session {record.id!r} was changed by another request while this one ran; "
                "read it again and retry",
                code="session_conflict",
            ) from None
        self._snapshot(updated, flush=flush)
        return updated

    def delete(self, tenant: str, session_id: str) -> None:
        # 404 for unknown ids, as for any other read. The ETag is required, not just
        # safe: state.redis refuses to overwrite a key created first-write without one.
        record, etag = self.get(tenant, session_id)
        # Publish the deletion BEFORE writing the tombstone, and let a publish failure
        # fail the request (503) with nothing written. A crash or error between the two
        # leaves the session live in the state store, the client without a success, and
        # a retried DELETE that publishes again (the archiver's deletion is idempotent;
        # later changes have higher versions, so the archive takes them again). The
        # other order is unsafe: a tombstone whose deletion never reached the archiver
        # makes every retry 404 here, and once the state store is lost the archive
        # restores the "deleted" session.
        event = SnapshotEvent(
            tenant=tenant, session_id=session_id, version=record.version, messages=[], deleted=True
        )
        self.sidecar.publish(SNAPSHOTS_TOPIC, event.model_dump(mode="json"))
        try:
            self.sidecar.save_state(session_key(tenant, session_id), _TOMBSTONE, etag=etag)
        except ConflictError:
            raise ConflictError(
                f"session {session_id!r} was changed by another request; read it and retry",
                code="session_conflict",
            ) from None

    def restore_version(self, tenant: str, session_id: str, version: int) -> SessionRecord:
        """Make archived ``version`` the session's current history (admin)."""
        if not is_safe_id(session_id):
            raise self._not_found(session_id)
        key = session_key(tenant, session_id)
        entry = self.sidecar.get_state(key)
        current = (
            SessionRecord.model_validate(entry.value)
            if entry is not None and entry.value != _TOMBSTONE
            else None
        )
        request = RestoreRequest(tenant=tenant, session_id=session_id, version=version)
        snap = RestoreReply.model_validate(
            self.sidecar.invoke(self.archiver_app_id, RESTORE, request.model_dump(mode="json"))
        )
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
            raise ConflictError(
                f"session {session_id!r} was changed by another request during the restore; retry",
                code="session_conflict",
            ) from None
        log.info(
            "session version restored",
            extra={"session_id": session_id, "from_version": version, "version": record.version},
        )
        # Flushed: an admin restore becomes an archived version at once, not on autosave.
        self._snapshot(record, flush=True)
        return record

    def _restore(self, tenant: str, session_id: str) -> SessionRecord:
        try:
            snap = self.sidecar.invoke(
                self.archiver_app_id, "restore", {"tenant": tenant, "session_id": session_id}
            )
        except NotFoundError:
            raise self._not_found(session_id) from None
        if snap.get("record") is not None:
            raise self._not_found(session_id)  # an archived response, not a session
        log.info("session restored from archive", extra={"session_id": session_id})
        return SessionRecord(
            id=session_id,
            tenant=tenant,
            version=int(snap["version"]),
            model=snap.get("model"),
            messages=[ChatMessage.model_validate(m) for m in snap["messages"]],
        )

    def _snapshot(self, record: SessionRecord, flush: bool = False) -> None:
        event = SnapshotEvent(
            tenant=record.tenant,
            session_id=record.id,
            version=record.version,
            messages=record.messages,
            model=record.model,
            flush=flush,
        )
        try:
            self.sidecar.publish(SNAPSHOTS_TOPIC, event.model_dump(mode="json"))
        except AutoGLMError as exc:
            # The record itself is durable in the state store; the next change carries
            # the full history to the archive again.
            log.warning("snapshot not published", extra={"reason": exc.message})

    @staticmethod
    def _not_found(session_id: str) -> NotFoundError:
        return NotFoundError(f"session {session_id!r} not found", param="session_id")
