"""Archiver's pub/sub handlers, free of Dapr types.

An event is acknowledged only after it is on disk. A write that fails for an OS reason
(disk full, read-only, permissions) asks Dapr to redeliver; a malformed event is dropped to
the dead-letter topic because no retry can fix it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from autoglm.archiver.archive import Archive
from autoglm.core.errors import InvalidRequestError
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import AuditEvent, SnapshotEvent, parse

log = logging.getLogger(__name__)

E = TypeVar("E", bound=BaseModel)


class ArchiverService:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def on_snapshot(self, body: bytes) -> Ack:
        return self._store(body, SnapshotEvent, self.archive.write_snapshot, "snapshot")

    def on_audit(self, body: bytes) -> Ack:
        return self._store(body, AuditEvent, self.archive.append_audit, "audit")

    def _store(self, body: bytes, schema: type[E], write: Callable[[E], object], kind: str) -> Ack:
        try:
            event = parse(schema, body)
        except InvalidRequestError as exc:
            log.warning("invalid %s event dropped", kind, extra={"reason": exc.message})
            return Ack.DROP
        try:
            write(event)
        except OSError as exc:
            log.error(
                "%s not written; will be redelivered",
                kind,
                extra={"errno": exc.errno, "reason": exc.strerror},
            )
            return Ack.RETRY
        return Ack.SUCCESS
