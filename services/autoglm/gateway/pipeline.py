"""The gateway's request flow, in one place and in order.

Every request passes ``RequestPipeline.begin`` (one ``before_request``), its route, and
``finish`` (one ``after_request``); ``end`` (teardown) closes its span. ``begin``:

1. starts the SERVER span, continuing the client's ``traceparent``, so that
   authentication and the Dapr calls happen inside it (and the audit event, published
   after the reply, in its trace);
2. builds the request's ``RequestContext`` (request id: the client's when short and
   plain, else a new one; client address; start time);
3. authenticates (Dapr callbacks ``/dapr/...`` by the app API token instead, public
   probes not at all) and admits the request against its tenant's rate limit; a failed
   authentication spends its address's budget of unauthenticated requests;
4. only then reads an undeclared (chunked) body up to the size limit, so nobody without
   a valid token makes the gateway read a byte of body.

Routes get the context from ``require(action)`` and pass it to the serving layer;
``finish`` echoes the request id and has the audit event published from the context
(the model the serving layer recorded on it) once the reply has been written. Tokens are
charged by the serving layer from the usage it computed (``RequestContext.charge``), and
by streams when they close.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from flask import Flask, Response, g, request
from opentelemetry.trace import Span

from autoglm.core.contracts import MeshClient
from autoglm.core.errors import AuthenticationError
from autoglm.core.schemas import random_hex
from autoglm.core.tracing import end_server_span, start_server_span
from autoglm.gateway.audit import audit_when_closed, client_ip
from autoglm.gateway.body_limit import check_undeclared_body
from autoglm.gateway.context import REQUEST_ID, RequestContext
from autoglm.gateway.security.auth import Authenticator
from autoglm.gateway.security.ratelimit import ChargeTokens, RateLimiter
from autoglm.gateway.security.rbac import Action, authorize

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
DAPR_PREFIX = "/dapr/"
#: Probes and Dapr callbacks are not API requests: no audit event.
UNAUDITED_PREFIXES = ("/healthz", "/readyz", DAPR_PREFIX)


@dataclass
class _Exchange:
    """What the pipeline keeps for one request between its steps (in ``g.exchange``)."""

    context: RequestContext
    span: Span
    span_token: object
    status: int = 500


@dataclass
class RequestPipeline:
    authenticator: Authenticator
    limiter: RateLimiter
    charge_tokens: ChargeTokens
    mesh: MeshClient
    #: daprd's token for calls into the app (``APP_API_TOKEN``); None refuses them all.
    app_token: str | None
    trust_forwarded: bool = False

    def install(self, app: Flask) -> None:
        app.before_request(self.begin)
        app.after_request(self.finish)
        app.teardown_request(self.end)

    # -- before the route -----------------------------------------------------------
    def begin(self) -> None:
        rule = request.url_rule.rule if request.url_rule else request.path
        # Werkzeug's headers are read case-insensitively: the trace context is taken from
        # them as they are, without a copy of every header (issue 15).
        span, token = start_server_span(
            f"{request.method} {rule}",
            request.headers,  # type: ignore[arg-type]
            {"http.request.method": request.method, "url.path": request.path},
        )
        sent = request.headers.get("x-request-id", "")
        from_client = REQUEST_ID.fullmatch(sent) is not None
        ctx = RequestContext(
            request_id=sent if from_client else random_hex(),
            request_id_from_client=from_client,
            client_ip=client_ip(self.trust_forwarded),
            started=time.monotonic(),
        )
        g.exchange = _Exchange(ctx, span, token)
        self._authenticate(ctx)
        check_undeclared_body()

    def _authenticate(self, ctx: RequestContext) -> None:
        if request.path in PUBLIC_PATHS:
            return
        if request.path.startswith(DAPR_PREFIX):
            sent = request.headers.get("dapr-api-token", "")
            token = self.app_token
            if not token or not hmac.compare_digest(sent.encode(), token.encode()):
                raise AuthenticationError("missing or wrong dapr-api-token")
            return
        try:
            principal = self.authenticator.authenticate(request.headers.get("Authorization"))
        except AuthenticationError:
            # Verifying is cheap (keys are cached; a forced re-read at most once a
            # second), so a valid token from the same address (a NAT) still passes.
            address = ctx.client_ip or "unknown"
            if self.limiter.anonymous_spent(address):
                ctx.audited = False
                raise self.limiter.anonymous_limited() from None
            self.limiter.check_anonymous(address)
            raise
        ctx.principal = principal
        ctx.charge_tokens = self.charge_tokens
        self.limiter.check_request(principal.tenant)

    # -- after the route ------------------------------------------------------------
    def finish(self, resp: Response) -> Response:
        exchange: _Exchange | None = g.get("exchange")
        if exchange is None:  # begin itself failed before it had a context
            return resp
        exchange.status = resp.status_code
        ctx = exchange.context
        resp.headers["x-request-id"] = ctx.request_id
        if ctx.audited and not request.path.startswith(UNAUDITED_PREFIXES):
            rule = request.url_rule.rule if request.url_rule else "-"
            audit_when_closed(resp, self.mesh, ctx, f"{request.method} {rule}", request.path)
        return resp

    def end(self, _exc: BaseException | None) -> None:
        exchange: _Exchange | None = g.pop("exchange", None)
        if exchange is not None:
            end_server_span(exchange.span, exchange.span_token, exchange.status)


def current_context() -> RequestContext | None:
    exchange: _Exchange | None = g.get("exchange")
    return exchange.context if exchange is not None else None


def require(action: Action) -> RequestContext:
    """The request's context, if its caller is authenticated and its role may perform
    ``action``."""
    ctx = current_context()
    if ctx is None or ctx.principal is None:
        raise AuthenticationError("authentication required")
    authorize(ctx.principal, action)
    return ctx
