"""Per-tenant request and token budgets per minute, shared by all gateway replicas, and
a per-address budget for requests that fail authentication.

Requests: fixed one-minute windows in the Dapr state store, counted exactly without a
contended counter. Each admitted request claims one numbered slot of its window,
``ratelimit:{scope}:requests:{minute}:{n}`` for ``n`` < the budget, with a create-only
write (atomic in the store): two requests, on any replicas, can never claim the same
slot, so no more than the budget is admitted; and a request whose slot was taken meanwhile
just tries the next one, so concurrency alone never refuses anyone while slots are
left. A hint, ``ratelimit:{scope}:requests:{minute}:next`` (last write wins), says where
to start probing; every slot below any value it ever held is taken (a request only moves
past a slot it found taken), so a stale hint costs probes, never correctness, and once
the hint reaches the budget the window is spent: 429 with ``Retry-After`` up to the next
minute. A replica remembers a spent window locally, so refusing costs no store round trip.
Keys expire by TTL shortly after their minute.

Conflicts are kept rare on purpose, because daprd counts a refused conditional write as
a failure of the state store (its resiliency policy retries it, and the store's circuit
breaker, shared by every tenant's sessions and jobs, opens after a run of them): within
a replica the requests of one scope claim one after another (a striped lock, a few
milliseconds each), and a slot is read before it is claimed, so only two replicas
claiming in the same instant ever conflict.

Tokens are charged after the fact (a generation is never cut for them) on one counter
per tenant and minute, updated with ETag writes retried until they land; the tenant's
next request is refused once the minute's budget is spent.

When the store is unreachable the limiter fails open: availability of the API outranks
exact accounting, and the gateway's other dependencies (sessions) share that store anyway.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from autoglm.core.errors import AutoGLMError, ConflictError, RateLimitError
from autoglm.core.schemas import STATESTORE
from autoglm.core.sidecar import StateAPI

log = logging.getLogger(__name__)

#: Charges ``(tenant, tokens)`` served; see ``TokenAccounting``.
ChargeTokens = Callable[[str, int], None]

WINDOW_S = 60
#: Keys outlive their window a little, for clock skew between replicas.
KEY_TTL_S = 2 * WINDOW_S
#: Conditional writes tried per token charge before it is given up (and logged): a
#: charge is never refused, so this only bounds the work one charge may take.
MAX_ATTEMPTS = 64
#: Scope prefix of the per-address budget of unauthenticated requests.
ANONYMOUS_SCOPE = "anonymous"
#: Spent windows remembered per replica (oldest dropped beyond this).
_MAX_SPENT = 10_000
_UNSAFE_ADDRESS = re.compile(r"[^0-9A-Za-z.:_-]")
#: Locks that serialize the claims of one scope within a replica (scopes share stripes).
_STRIPES = 64


@dataclass
class RateLimiter:
    state: StateAPI
    _: KW_ONLY
    requests_per_min: int
    tokens_per_min: int
    anonymous_requests_per_min: int = 0
    clock: Callable[[], float] = time.time
    store: str = STATESTORE
    #: scope -> the window it has spent; a spent window stays spent.
    _spent: dict[str, int] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stripes: list[threading.Lock] = field(
        default_factory=lambda: [threading.Lock() for _ in range(_STRIPES)], init=False
    )

    def _serialized(self, scope: str) -> threading.Lock:
        return self._stripes[hash(scope) % _STRIPES]

    def check_request(self, tenant: str) -> None:
        """Admit one request of ``tenant`` or raise ``RateLimitError``. 0 = unlimited."""
        # Tokens first: a request refused for tokens must not also spend a request.
        if self.tokens_per_min > 0 and self._used(tenant, "tokens") >= self.tokens_per_min:
            raise self._limited("tokens", self.tokens_per_min)
        if self.requests_per_min > 0:
            self._claim_slot(tenant, self.requests_per_min)

    def anonymous_spent(self, address: str) -> bool:
        """Whether ``address`` has spent this minute's budget of unauthenticated requests,
        as far as this replica knows (no store round trip)."""
        if self.anonymous_requests_per_min <= 0:
            return False
        return self._spent.get(self._anonymous_scope(address)) == self._window()

    def check_anonymous(self, address: str) -> None:
        """Spend one unauthenticated request of ``address``, or raise ``RateLimitError``."""
        if self.anonymous_requests_per_min > 0:
            self._claim_slot(self._anonymous_scope(address), self.anonymous_requests_per_min)

    def anonymous_limited(self) -> RateLimitError:
        return self._limited("unauthenticated requests", self.anonymous_requests_per_min)

    def record_tokens(self, tenant: str, tokens: int) -> None:
        """Charge tokens already served; the tenant's next request is refused once this
        minute's budget is spent (a generation is never cut for it)."""
        if self.tokens_per_min > 0 and tokens > 0:
            self._add(tenant, "tokens", tokens)

    # -- internals -----------------------------------------------------------------------
    def _window(self) -> int:
        return int(self.clock() // WINDOW_S)

    def _key(self, tenant: str, kind: str) -> str:
        return f"ratelimit:{tenant}:{kind}:{self._window()}"

    @staticmethod
    def _anonymous_scope(address: str) -> str:
        return f"{ANONYMOUS_SCOPE}:{_UNSAFE_ADDRESS.sub('_', address)[:64]}"

    def _claim_slot(self, scope: str, limit: int) -> None:
        window = self._window()
        kind = "unauthenticated requests" if scope.startswith(ANONYMOUS_SCOPE) else "requests"
        if self._spent.get(scope) == window:
            raise self._limited(kind, limit)
        base = f"ratelimit:{scope}:requests:{window}"
        with self._serialized(scope):
            try:
                if self._claim(base, limit):
                    return
            except AutoGLMError as exc:
                log.warning("rate limit store unavailable; allowing", extra={"reason": exc.message})
                return
        self._remember_spent(scope, window)
        raise self._limited(kind, limit)

    def _claim(self, base: str, limit: int) -> bool:
        """Claim the first free slot of ``base`` below ``limit``; False if none is left."""
        hint = self.state.get_state(f"{base}:next", store=self.store)
        slot = max(0, int(hint.value)) if hint is not None else 0
        while slot < limit:
            key = f"{base}:{slot}"
            if self.state.get_state(key, store=self.store) is None:
                try:
                    self.state.save_state(
                        key, 1, store=self.store, create_only=True, ttl_s=KEY_TTL_S
                    )
                except ConflictError:
                    pass  # another replica claimed it this instant
                else:
                    self.state.save_state(
                        f"{base}:next", slot + 1, store=self.store, ttl_s=KEY_TTL_S
                    )
                    return True
            slot += 1  # taken: the next one may be free
        return False

    def _remember_spent(self, scope: str, window: int) -> None:
        with self._lock:
            if len(self._spent) >= _MAX_SPENT:
                for old in [s for s, w in self._spent.items() if w != window]:
                    del self._spent[old]
                if len(self._spent) >= _MAX_SPENT:
                    self._spent.clear()
            self._spent[scope] = window

    def _used(self, tenant: str, kind: str) -> int:
        try:
            entry = self.state.get_state(self._key(tenant, kind), store=self.store)
        except AutoGLMError as exc:
            log.warning("rate limit store unavailable; allowing", extra={"reason": exc.message})
            return 0
        return int(entry.value) if entry is not None else 0

    def _add(self, tenant: str, kind: str, amount: int) -> None:
        with self._serialized(f"{tenant}:{kind}"):
            self._add_serialized(tenant, kind, amount)

    def _add_serialized(self, tenant: str, kind: str, amount: int) -> None:
        key = self._key(tenant, kind)
        for attempt in range(MAX_ATTEMPTS):
            try:
                entry = self.state.get_state(key, store=self.store)
                used = int(entry.value) if entry is not None else 0
                self.state.save_state(
                    key,
                    used + amount,
                    etag=entry.etag if entry is not None else None,
                    store=self.store,
                    create_only=entry is None,
                    ttl_s=KEY_TTL_S,
                )
                return
            except ConflictError:
                # Another replica charged concurrently: re-read after a short random
                # pause, so that the contenders do not collide again in lockstep.
                time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
            except AutoGLMError as exc:
                log.warning("rate limit store unavailable; allowing", extra={"reason": exc.message})
                return
        log.warning("token charge of %s dropped: counter %s too contended", amount, key)

    def _limited(self, kind: str, limit: int) -> RateLimitError:
        retry_after = max(1, WINDOW_S - int(self.clock() % WINDOW_S))
        return RateLimitError(
            f"rate limit of {limit} {kind} per minute exceeded; retry in {retry_after}s",
            details={"limit": "tokens" if kind == "tokens" else "requests"},
            retry_after=retry_after,
        )


@dataclass
class TokenAccounting:
    """The one way served tokens reach a tenant's budget: replies (from the usage the
    serving layer computed), streams when they end and job results when stored.
    Accounting never fails the work it counts, so errors are logged by the limiter and
    swallowed here."""

    limiter: RateLimiter

    def __call__(self, tenant: str, tokens: int) -> None:
        with contextlib.suppress(AutoGLMError):
            self.limiter.record_tokens(tenant, tokens)
