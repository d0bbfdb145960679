"""One API request as the layers below the HTTP routes see it.

The request pipeline (``pipeline.py``, the only Flask side of this) builds a
``RequestContext`` once per request: its id, when it started, the client's address, and
after authentication the principal and the way to charge its tenant's token budget.
Routes hand it to the serving layer explicitly; nothing below the routes reads Flask's
request globals. What the serving layer learns (the model asked for, the tokens served)
is written back to the context: the audit event and the token budget take it from there.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autoglm.core.errors import AuthenticationError
from autoglm.gateway.security.principal import Principal
from autoglm.gateway.security.ratelimit import ChargeTokens

#: A client's request id is kept only when it is short and plain: it is echoed in a
#: header and written to logs.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _no_charge(_tenant: str, _tokens: int) -> None:
    pass


@dataclass
class RequestContext:
    request_id: str
    client_ip: str | None = None
    started: float = field(default_factory=time.monotonic)
    #: The authenticated caller; None on public routes, Dapr callbacks, and before (or
    #: after a failed) authentication.
    principal: Principal | None = None
    #: Charges served tokens to a tenant's budget (``TokenAccounting``).
    charge_tokens: ChargeTokens = _no_charge
    #: The model the request asked for, for its audit event.
    model: str | None = None
    #: False for a request that is not audited one by one: an address that spent its
    #: budget of unauthenticated requests (its first refusal per replica and minute is).
    audited: bool = True
    #: Whether ``request_id`` is the client's (``x-request-id``) rather than one the
    #: gateway made: only a client's can carry personal data, so only it is masked in
    #: the audit event.
    request_id_from_client: bool = False

    @property
    def caller(self) -> Principal:
        if self.principal is None:
            raise AuthenticationError("authentication required")
        return self.principal

    @property
    def tenant(self) -> str:
        """Whose request this is: state keys, the engine's fair share and budgets."""
        return self.caller.tenant

    def charge(self, tokens: int) -> None:
        """Charge ``tokens`` served by this request (a reply's usage) to the caller."""
        if tokens and self.principal is not None:
            self.charge_tokens(self.principal.tenant, tokens)

    def meter(self) -> Callable[[int], None]:
        """Charges tokens to this caller's budget, callable after the request has been
        answered (a stream ends when the client has read it, or has left)."""
        if self.principal is None:
            return functools.partial(_no_charge, "")
        return functools.partial(self.charge_tokens, self.principal.tenant)
