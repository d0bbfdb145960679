"""Stored responses in the Dapr state store, archived like sessions.

A response lives under ``response:{tenant}:{id}``; every write carries the ETag read with
it (the first one is create-only), so a background result and a cancel cannot both land.
The record holds what the next response of a ``previous_response_id`` chain needs — the
whole conversation so far (``context``) — so a turn reads one record, never the chain.

Archive: each write is published to ``session.snapshots`` as a snapshot of the
response's conversation, with the response object as the event's ``record`` — the same
autosave, versions, encryption and restore as sessions. A record missing from the state
store (Redis flushed) is restored from the archiver on read; a deletion is published
first and then written as a tombstone, so the archive forgets it too
(``ArchivedRecords``).
"""

from __future__ import annotations

import logging
from typing import Any

from autoglm.core.archive_protocol import RestoreReply
from autoglm.core.schemas import SnapshotEvent
from autoglm.gateway.openai.responses.protocol import ResponseRecord
from autoglm.gateway.records import ArchivedRecords

log = logging.getLogger(__name__)


class ResponseStore(ArchivedRecords):
    kind = "response"
    param = "response_id"

    def create(self, record: ResponseRecord, *, flush: bool = False) -> None:
        rid = record.response.id
        self.sidecar.save_state(
            self.key(record.tenant, rid), record.model_dump(mode="json"), create_only=True
        )
        self._snapshot(record, flush=flush)

    def get(self, tenant: str, rid: str) -> tuple[ResponseRecord, str | None]:
        """The record and its ETag; restored from the archive when the store lost it.
        Another tenant's id is not found (the key is scoped by the caller's tenant)."""
        entry = self.read(tenant, rid)
        return ResponseRecord.model_validate(entry.value), entry.etag

    def _from_archive(self, tenant: str, rid: str, reply: RestoreReply) -> dict[str, Any]:
        if reply.record is None:
            raise self.not_found(rid)  # an archived session of that name, not a response
        log.info("response restored from archive", extra={"response_id": rid})
        record = ResponseRecord.model_validate(
            {**reply.record, "tenant": tenant, "context": reply.messages, "version": reply.version}
        )
        return record.model_dump(mode="json")

    def update(self, record: ResponseRecord, etag: str | None) -> ResponseRecord:
        """Write a changed record if nobody changed it since it was read (409 else)."""
        updated = record.model_copy(update={"version": record.version + 1})
        self.save(record.tenant, record.response.id, updated.model_dump(mode="json"), etag)
        self._snapshot(updated)
        return updated

    def delete(self, tenant: str, rid: str) -> None:
        """Publish the deletion to the archive, then write the tombstone."""
        record, etag = self.get(tenant, rid)
        self.delete_record(tenant, rid, record.version, etag)

    def _snapshot(self, record: ResponseRecord, flush: bool = False) -> None:
        self.publish_snapshot(
            SnapshotEvent(
                tenant=record.tenant,
                session_id=record.response.id,
                version=record.version,
                messages=record.context,
                model=record.response.model,
                flush=flush,
                record=record.model_dump(mode="json", exclude={"tenant", "context", "version"}),
            )
        )
