"""One audit event per API request, published to the ``audit`` topic.

Events hold who did what to which resource and how it ended; never bodies. Every field
a client or an identity provider chooses can carry personal data and is masked like
free text: the path (ids chosen by clients, e.g. a card number as a job id), the token's
subject (often an e-mail address), the model name and the request id. What the gateway
itself sets (tenant, role, action, status, ids and times) is kept, so the trail stays
useful: the tenant is the archive's partition key and is assigned by the operator.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request
from opentelemetry import trace

from autoglm.core.errors import AutoGLMError
from autoglm.core.schemas import AUDIT_TOPIC, AuditEvent
from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.security.masking import mask_pii

log = logging.getLogger(__name__)

#: ``g`` flag of a request that is not audited one by one: an address that spent its
#: budget of unauthenticated requests (its first refusal per replica and minute is).
SKIP_AUDIT = "skip_audit"
#: Probes and Dapr callbacks are not API requests.
_SKIP_PREFIXES = ("/healthz", "/readyz", "/dapr/")


def install_audit(app: Flask, sidecar: SidecarAPI, *, trust_forwarded: bool) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.monotonic()

    @app.after_request
    def _publish(resp: Response) -> Response:
        if request.path.startswith(_SKIP_PREFIXES) or g.get(SKIP_AUDIT):
            return resp
        principal = g.get("principal")
        event = AuditEvent(
            tenant=principal.tenant if principal else "_anonymous",
            user=_masked(principal.subject if principal else None),
            role=principal.role if principal else None,
            action=f"{request.method} {request.url_rule.rule if request.url_rule else '-'}",
            resource=mask_pii(request.path),
            model=_masked(g.get("model")),
            client_ip=client_ip(trust_forwarded),
            status=resp.status_code,
            latency_ms=0.0,
            trace_id=_trace_id(),
            request_id=_masked(g.get("request_id")),
        )
        started = g.get("started", time.monotonic())

        def publish() -> None:
            done = event.model_copy(
                update={"latency_ms": round((time.monotonic() - started) * 1000, 2)}
            )
            try:
                sidecar.publish(AUDIT_TOPIC, done.model_dump(mode="json"))
            except AutoGLMError as exc:
                log.error("audit event not published", extra={"reason": exc.message})

        if resp.is_streamed:
            # A stream (SSE) is still being served: its event goes out when it has ended,
            # so the latency covers the whole stream, not just its first bytes.
            resp.call_on_close(publish)
        else:
            publish()
        return resp


def _masked(value: str | None) -> str | None:
    return mask_pii(value) if value else value


def client_ip(trust_forwarded: bool) -> str | None:
    """The client's address: the peer's, or behind a trusted proxy (Istio's ingress,
    the dev front door) the last ``X-Forwarded-For`` entry — the one that proxy appended.
    Entries before it come from the client and can be forged; so can the header itself
    without a proxy, which is why it is trusted only when configured."""
    forwarded = request.headers.get("X-Forwarded-For") if trust_forwarded else None
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip() or request.remote_addr
    return request.remote_addr


def _trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None
