"""Stored responses in the Dapr state store, archived like sessions.

A response lives under ``response:{tenant}:{id}``; every write carries the ETag read with
it (the first one is create-only), so a background result and a cancel cannot both land.
The record holds what the next response of a ``previous_response_id`` chain needs — the
whole conversation so far (``context``) — so a turn reads one record, never the chain.

Archive: each write is published to ``session.snapshots`` as a snapshot of the
response's conversation, with the response object as the event's ``record`` — the same
autosave, versions, encryption and restore as sessions. A record missing from the state
store (Redis flushed) is restored from the archiver on read; a deletion is published
first and then written as a tombstone, so the archive forgets it too.
"""

from __future__ import annotations

import contextlib
import logging

from autoglm.core.archive_protocol import RESTORE, RestoreReply, RestoreRequest
from autoglm.core.errors import AutoGLMError, ConflictError, NotFoundError
from autoglm.core.schemas import SNAPSHOTS_TOPIC, SnapshotEvent, is_safe_id
from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.openai.responses.protocol import ResponseRecord

log = logging.getLogger(__name__)

_TOMBSTONE = {"deleted": True}


def response_key(tenant: str, rid: str) -> str:
    return f"response:{tenant}:{rid}"


class ResponseStore:
    def __init__(self, sidecar: SidecarAPI, *, archiver_app_id: str = "archiver") -> None:
        self.sidecar = sidecar
        self.archiver_app_id = archiver_app_id

    def create(self, record: ResponseRecord, *, flush: bool = False) -> None:
        rid = record.response.id
        self.sidecar.save_state(
            response_key(record.tenant, rid), record.model_dump(mode="json"), create_only=True
        )
        self._snapshot(record, flush=flush)

    def get(self, tenant: str, rid: str) -> tuple[ResponseRecord, str | None]:
        """The record and its ETag; restored from the archive when the store lost it.
        Another tenant's id is not found (the key is scoped by the caller's tenant)."""
        if not is_safe_id(rid):
            raise _not_found(rid)
        key = response_key(tenant, rid)
        entry = self.sidecar.get_state(key)
        if entry is None:
            restored = self._restore(tenant, rid)
            # ConflictError: another replica restored it first; read theirs below.
            with contextlib.suppress(ConflictError):
                self.sidecar.save_state(key, restored.model_dump(mode="json"), create_only=True)
            entry = self.sidecar.get_state(key)
        if entry is None or entry.value == _TOMBSTONE:
            raise _not_found(rid)
        return ResponseRecord.model_validate(entry.value), entry.etag

    def update(self, record: ResponseRecord, etag: str | None) -> ResponseRecord:
        """Write a changed record if nobody changed it since it was read (409 else)."""
        updated = record.model_copy(update={"version": record.version + 1})
        try:
            self.sidecar.save_state(
                response_key(record.tenant, record.response.id),
                updated.model_dump(mode="json"),
                etag=etag,
            )
        except ConflictError:
            raise ConflictError(
                f"response {record.response.id!r} was changed by another request; retry",
                code="response_conflict",
            ) from None
        self._snapshot(updated)
        return updated

    def delete(self, tenant: str, rid: str) -> None:
        """Publish the deletion to the archive, then write the tombstone (the order and
        its reasons are ``SessionStore.delete``'s)."""
        record, etag = self.get(tenant, rid)
        event = SnapshotEvent(
            tenant=tenant, session_id=rid, version=record.version, messages=[], deleted=True
        )
        self.sidecar.publish(SNAPSHOTS_TOPIC, event.model_dump(mode="json"))
        try:
            self.sidecar.save_state(response_key(tenant, rid), _TOMBSTONE, etag=etag)
        except ConflictError:
            raise ConflictError(
                f"response {rid!r} was changed by another request; retry",
                code="response_conflict",
            ) from None

    def _restore(self, tenant: str, rid: str) -> ResponseRecord:
        request = RestoreRequest(tenant=tenant, session_id=rid)
        try:
            reply = RestoreReply.model_validate(
                self.sidecar.invoke(self.archiver_app_id, RESTORE, request.model_dump(mode="json"))
            )
        except NotFoundError:
            raise _not_found(rid) from None
        if reply.record is None:
            raise _not_found(rid)  # an archived session of that name, not a response
        log.info("response restored from archive", extra={"response_id": rid})
        return ResponseRecord.model_validate(
            {**reply.record, "tenant": tenant, "context": reply.messages, "version": reply.version}
        )

    def _snapshot(self, record: ResponseRecord, flush: bool = False) -> None:
        event = SnapshotEvent(
            tenant=record.tenant,
            session_id=record.response.id,
            version=record.version,
            messages=record.context,
            model=record.response.model,
            flush=flush,
            record=record.model_dump(mode="json", exclude={"tenant", "context", "version"}),
        )
        try:
            self.sidecar.publish(SNAPSHOTS_TOPIC, event.model_dump(mode="json"))
        except AutoGLMError as exc:
            # The record is durable in the state store; its next change is archived whole.
            log.warning("response snapshot not published", extra={"reason": exc.message})


def _not_found(rid: str) -> NotFoundError:
    return NotFoundError(f"response {rid!r} not found", param="response_id")
