"""Authentication, rate limiting and authorization at the HTTP edge.

Every route except health, the OpenAPI document and Dapr's own callbacks needs a valid
bearer token; ``require`` then checks the route's action against the caller's role.
Dapr callbacks (``/dapr/...``) come from the local sidecar and must carry the app API
token (``APP_API_TOKEN``, which daprd sends as ``dapr-api-token``); without a token
configured they are all refused, so a local process can never forge a delivery.
"""

from __future__ import annotations

import functools
import hmac
import os
from collections.abc import Callable

from flask import Flask, Response, current_app, g, request

from autoglm.core.errors import AuthenticationError
from autoglm.gateway.audit import SKIP_AUDIT, client_ip
from autoglm.gateway.security.auth import Authenticator
from autoglm.gateway.security.principal import Principal
from autoglm.gateway.security.ratelimit import ChargeTokens, RateLimiter, TokenAccounting
from autoglm.gateway.security.rbac import Action, authorize

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
DAPR_PREFIX = "/dapr/"
#: ``app.extensions`` key of the app's ``TokenAccounting``.
TOKENS_EXTENSION = "autoglm.tokens"


def install_guards(
    app: Flask,
    authenticator: Authenticator,
    limiter: RateLimiter,
    tokens: ChargeTokens | None = None,
    *,
    trust_forwarded: bool = False,
) -> None:
    """``tokens`` charges served tokens (default: to ``limiter``); streams reach it
    through ``token_meter``. Requests whose authentication fails spend their client
    address's budget of unauthenticated requests; once it is spent they are 429 (and
    only the first such refusal is audited)."""
    app_token = os.environ.get("APP_API_TOKEN")
    charge = tokens or TokenAccounting(limiter)
    app.extensions[TOKENS_EXTENSION] = charge

    @app.before_request
    def _authenticate() -> None:
        if request.path in PUBLIC_PATHS:
            return
        if request.path.startswith(DAPR_PREFIX):
            sent = request.headers.get("dapr-api-token", "")
            if not app_token or not hmac.compare_digest(sent.encode(), app_token.encode()):
                raise AuthenticationError("missing or wrong dapr-api-token")
            return
        try:
            principal = authenticator.authenticate(request.headers.get("Authorization"))
        except AuthenticationError:
            # Verifying is cheap (keys are cached; a forced re-read at most once a
            # second), so a valid token from the same address (a NAT) still passes.
            address = client_ip(trust_forwarded) or "unknown"
            if limiter.anonymous_spent(address):
                setattr(g, SKIP_AUDIT, True)
                raise limiter.anonymous_limited() from None
            limiter.check_anonymous(address)
            raise
        g.principal = principal
        limiter.check_request(principal.tenant)

    @app.after_request
    def _count_tokens(resp: Response) -> Response:
        # Token budgets are charged after the fact, from the usage the client sees.
        # Only JSON: an SSE stream charges itself when it ends (``token_meter``), so
        # it is never counted twice.
        principal = g.get("principal")
        if principal is None or resp.status_code != 200 or resp.mimetype != "application/json":
            return resp
        if g.get("uncharged"):
            return resp
        usage = (resp.get_json(silent=True) or {}).get("usage")
        if isinstance(usage, dict) and usage.get("total_tokens"):
            charge(principal.tenant, int(usage["total_tokens"]))
        return resp


def token_meter() -> Callable[[int], None]:
    """Charges tokens to the current caller's budget, callable after this request's
    context is gone (a stream ends when the client has read it, or has left)."""
    principal: Principal | None = g.get("principal")
    charge: ChargeTokens | None = current_app.extensions.get(TOKENS_EXTENSION)
    if principal is None or charge is None:
        return _no_charge
    return functools.partial(charge, principal.tenant)


def uncharged() -> None:
    """This request's reply shows usage charged before (a stored response read back)."""
    g.uncharged = True


def _no_charge(_tokens: int) -> None:
    pass


def require(action: Action) -> Principal:
    """The authenticated caller, if its role may perform ``action``."""
    principal: Principal | None = g.get("principal")
    if principal is None:
        raise AuthenticationError("authentication required")
    authorize(principal, action)
    return principal
