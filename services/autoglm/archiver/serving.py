"""Archiver's handlers for pub/sub and service invocation, free of Dapr types.

An event is acknowledged only once its effect is durable. A write that fails for an OS
reason (disk full, read-only, permissions) answers RETRY so Dapr redelivers, and marks
the archiver not ready until a write succeeds again; a malformed event, or a stale write
that conflicts, is dropped to the dead-letter topic because no retry can fix it.
Invocation failures are structured error payloads (``autoglm.core.callback_server``),
never tracebacks; a failed disk read or write there is 503 and makes it not ready too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from autoglm.archiver.atomic import probe_write
from autoglm.archiver.attachments import AttachmentStore
from autoglm.archiver.audit import AuditLog
from autoglm.archiver.metrics import ArchiverMetrics, Readiness
from autoglm.archiver.paths import component
from autoglm.archiver.sessions import SessionArchive
from autoglm.core.archive_protocol import (
    AttachmentPutReply,
    AttachmentPutRequest,
    HealthReply,
    RestoreReply,
    RestoreRequest,
)
from autoglm.core.errors import AutoGLMError, ConflictError, InvalidRequestError, UnavailableError
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import AuditEvent, SnapshotEvent, parse

log = logging.getLogger(__name__)


@dataclass
class ArchiverService:
    sessions: SessionArchive
    attachments: AttachmentStore
    audit: AuditLog
    metrics: ArchiverMetrics
    readiness: Readiness
    #: Where a tiny write probes the disk while not ready (``_probe``).
    probe_path: Path

    # -- pub/sub -----------------------------------------------------------------------
    def on_snapshot(self, body: bytes) -> Ack:
        try:
            event = parse(SnapshotEvent, body)
            component(event.tenant, "tenant")
            component(event.session_id, "session_id")
        except InvalidRequestError as exc:
            return self._outcome("snapshot", "invalid", Ack.DROP, exc.message)
        try:
            if event.deleted:
                outcome = self.sessions.delete(event.tenant, event.session_id, event.version)
            else:
                outcome = self.sessions.accept(event)
        except ConflictError as exc:
            return self._outcome("snapshot", "conflict", Ack.DROP, exc.message)
        except OSError as exc:
            self.readiness.failed("snapshot", exc)
            return self._outcome("snapshot", "retry", Ack.RETRY, None)
        self.readiness.succeeded()
        return self._outcome("snapshot", outcome, Ack.SUCCESS, None)

    def on_audit(self, body: bytes) -> Ack:
        try:
            event = parse(AuditEvent, body)
            component(event.tenant, "tenant")
        except InvalidRequestError as exc:
            return self._outcome("audit", "invalid", Ack.DROP, exc.message)
        try:
            self.audit.append(event)
        except OSError as exc:
            self.readiness.failed("audit", exc)
            return self._outcome("audit", "retry", Ack.RETRY, None)
        self.readiness.succeeded()
        return self._outcome("audit", "written", Ack.SUCCESS, None)

    def _outcome(self, topic: str, outcome: str, ack: Ack, reason: str | None) -> Ack:
        self.metrics.events.labels(topic, outcome).inc()
        if ack is Ack.DROP:
            log.warning("%s event dropped to dead letter", topic, extra={"reason": reason})
        return ack

    # -- invocation (``autoglm.archiver.app`` serves these through the contract table) --
    def storage_failure(self, method: str, exc: Exception) -> AutoGLMError | None:
        """A failed read or write of the archive (an OSError) makes the archiver not
        ready and is answered as unavailable, so the caller retries later."""
        if not isinstance(exc, OSError):
            return None
        self.readiness.failed(method, exc)
        return UnavailableError("archive storage is unavailable; retry later")

    def restore(self, req: RestoreRequest) -> RestoreReply:
        state = self.sessions.restore(req.tenant, req.session_id, req.version)
        latest = state if req.version is None else self.sessions.restore(req.tenant, req.session_id)
        return RestoreReply(
            tenant=state.tenant,
            session_id=state.session_id,
            version=state.version,
            messages=list(state.messages),
            model=state.model,
            latest_version=latest.version,
            record=state.record,
        )

    def attachment_put(self, req: AttachmentPutRequest) -> AttachmentPutReply:
        try:
            reply = self.attachments.put(req)
        except AutoGLMError as exc:
            self.metrics.uploads.labels(exc.code).inc()
            raise
        self.metrics.uploads.labels("complete" if reply.complete else "accepted").inc()
        self.readiness.succeeded()
        return reply

    def health(self) -> HealthReply:
        self._probe()
        return HealthReply(
            ready=self.readiness.ready,
            reason=self.readiness.reason,
            dirty_sessions=self.sessions.dirty_count,
        )

    def check_health(self) -> None:
        """Dapr app health check: raising makes daprd pause deliveries until it passes."""
        self._probe()
        if not self.readiness.ready:
            raise UnavailableError(self.readiness.reason or "not ready")

    def _probe(self) -> None:
        """While not ready, try a tiny durable write: the way back to ready when no event
        is being delivered (space returned, volume remounted read-write)."""
        if self.readiness.ready:
            return
        try:
            probe_write(self.probe_path)
        except OSError as exc:
            self.readiness.failed("probe", exc)
            return
        self.readiness.succeeded()
