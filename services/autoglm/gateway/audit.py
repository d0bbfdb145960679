"""One audit event per API request, published to the ``audit`` topic.

Events hold who did what to which resource and how it ended; never bodies. Every field
a client or an identity provider chooses can carry personal data and is masked like
free text: the path (ids chosen by clients, e.g. a card number as a job id), the token's
subject (often an e-mail address), the model name and a request id the client sent. What
the gateway itself sets (tenant, role, action, status, ids and times, its own request
ids) is kept, so the trail stays useful: the tenant is the archive's partition key and
is assigned by the operator.
"""

from __future__ import annotations

import logging
import time

from flask import Response, request
from opentelemetry import context, trace

from autoglm.core.contracts import AUDIT_EVENTS, MeshClient
from autoglm.core.schemas import AuditEvent
from autoglm.gateway.context import RequestContext
from autoglm.gateway.security.masking import mask_pii

log = logging.getLogger(__name__)


def audit_event(ctx: RequestContext, action: str, path: str, status: int) -> AuditEvent:
    """The audit event of a request that ended with ``status`` (latency filled in when
    it is published)."""
    principal = ctx.principal
    return AuditEvent(
        tenant=principal.tenant if principal else "_anonymous",
        user=_masked(principal.subject if principal else None),
        role=principal.role if principal else None,
        action=action,
        resource=mask_pii(path),
        model=_masked(ctx.model),
        client_ip=ctx.client_ip,
        status=status,
        latency_ms=0.0,
        trace_id=_trace_id(),
        # A request id the gateway made (a random hex string) has nothing to mask; its
        # masking cost ~0.04 ms per request and filled the masking cache with values
        # never seen again (issue 15).
        request_id=_masked(ctx.request_id) if ctx.request_id_from_client else ctx.request_id,
    )


def publish_audit(mesh: MeshClient, event: AuditEvent, started: float) -> None:
    """Publish ``event`` with the latency since ``started`` (monotonic), just after the
    reply, in the request's trace (``publish_soon``, issue 15); a failure is logged,
    never the request's."""
    done = event.model_copy(update={"latency_ms": round((time.monotonic() - started) * 1000, 2)})
    mesh.publish(AUDIT_EVENTS, done, soon=True)


def audit_when_closed(
    resp: Response, mesh: MeshClient, ctx: RequestContext, action: str, path: str
) -> None:
    """Build and queue the audit event of ``resp`` when the server closes it: after its
    last byte was written (a stream's too, so the latency covers all of it), in the
    request's trace context, which is no longer current by then.

    Building the event (masking included) and queueing it cost ~5 % of the gateway's
    CPU per chat; done before the reply, the client waited for it (issue 15). Nothing
    changes for the event itself: it was already published after the reply
    (``publish_soon``), and a failure is logged, never the request's. The server closes
    a response also when its client left mid-reply, so every request still has its
    event."""
    status = resp.status_code
    trace_context = context.get_current()

    def publish() -> None:
        token = context.attach(trace_context)
        try:
            publish_audit(mesh, audit_event(ctx, action, path, status), ctx.started)
        except Exception:  # the reply is out: nobody to answer an error to
            log.exception("audit event not queued", extra={"request_id": ctx.request_id})
        finally:
            context.detach(token)

    resp.call_on_close(publish)


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
