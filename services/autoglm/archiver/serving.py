"""Archiver's handlers for pub/sub and service invocation, free of Dapr types.

An event is acknowledged only once its effect is durable. A write that fails for an OS
reason (disk full, read-only, permissions) answers RETRY so Dapr redelivers, and marks
the archiver not ready until a write succeeds again; a malformed event, or a stale write
that conflicts, is dropped to the dead-letter topic because no retry can fix it.
Invocation failures are structured error payloads (``error_reply``), never tracebacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from autoglm.archiver.atomic import probe_write
from autoglm.archiver.attachments import AttachmentStore
from autoglm.archiver.audit import AuditLog
from autoglm.archiver.metrics import ArchiverMetrics, Readiness
from autoglm.archiver.paths import component
from autoglm.archiver.sessions import SessionArchive
from autoglm.core.archive_protocol import (
    AttachmentGetRequest,
    AttachmentPutRequest,
    AttachmentStartRequest,
    AuditQueryRequest,
    HealthReply,
    RestoreReply,
    RestoreRequest,
)
from autoglm.core.errors import (
    AutoGLMError,
    ConflictError,
    InternalError,
    InvalidRequestError,
    UnavailableError,
)
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import AuditEvent, SnapshotEvent, parse
from autoglm.core.sidecar import error_reply

log = logging.getLogger(__name__)


class ArchiverService:
    def __init__(
        self,
        sessions: SessionArchive,
        attachments: AttachmentStore,
        audit: AuditLog,
        metrics: ArchiverMetrics,
        readiness: Readiness,
        probe_path: Path,
    ) -> None:
        self.sessions = sessions
        self.attachments = attachments
        self.audit = audit
        self.metrics = metrics
        self.readiness = readiness
        self.probe_path = probe_path

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

    # -- invocation --------------------------------------------------------------------
    def _reply(self, method: str, work: Callable[[], str]) -> str:
        try:
            return work()
        except AutoGLMError as exc:
            return error_reply(exc)
        except OSError as exc:
            self.readiness.failed(method, exc)
            return error_reply(UnavailableError("archive storage is unavailable; retry later"))
        except Exception:
            log.exception("%s failed", method)
            return error_reply(InternalError(f"{method} failed"))

    def restore(self, body: bytes) -> str:
        def work() -> str:
            req = parse(RestoreRequest, body)
            state = self.sessions.restore(req.tenant, req.session_id, req.version)
            latest = (
                state if req.version is None else self.sessions.restore(req.tenant, req.session_id)
            )
            return RestoreReply(
                tenant=state.tenant,
                session_id=state.session_id,
                version=state.version,
                messages=list(state.messages),
                model=state.model,
                latest_version=latest.version,
                record=state.record,
            ).model_dump_json()

        return self._reply("restore", work)

    def attachment_start(self, body: bytes) -> str:
        return self._reply(
            "attachment_start",
            lambda: self.attachments.start(parse(AttachmentStartRequest, body)).model_dump_json(),
        )

    def attachment_put(self, body: bytes) -> str:
        def work() -> str:
            try:
                reply = self.attachments.put(parse(AttachmentPutRequest, body))
            except AutoGLMError as exc:
                self.metrics.uploads.labels(exc.code).inc()
                raise
            self.metrics.uploads.labels("complete" if reply.complete else "accepted").inc()
            self.readiness.succeeded()
            return reply.model_dump_json()

        return self._reply("attachment_put", work)

    def attachment_get(self, body: bytes) -> str:
        return self._reply(
            "attachment_get",
            lambda: self.attachments.get(parse(AttachmentGetRequest, body)).model_dump_json(),
        )

    def audit_query(self, body: bytes) -> str:
        return self._reply(
            "audit_query",
            lambda: self.audit.query(parse(AuditQueryRequest, body)).model_dump_json(),
        )

    def health(self, _body: bytes = b"") -> str:
        self._probe()
        return HealthReply(
            ready=self.readiness.ready,
            reason=self.readiness.reason,
            dirty_sessions=self.sessions.dirty_count,
        ).model_dump_json()

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
