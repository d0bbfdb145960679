"""Per-tenant request and token budgets per minute, shared by all gateway replicas.

Counters live in the Dapr state store under ``ratelimit:{tenant}:{kind}:{minute}``:
fixed one-minute windows, so ``Retry-After`` is exact and each check costs one read and
one write. Keys expire by TTL shortly after their minute. Updates are conditional on the
ETag (or create-only for a new minute) and retried a bounded number of times on a
concurrent update, so two replicas never both spend the last unit; under contention so
heavy that the retries run out the request is refused rather than over-admitted.

When the store is unreachable the limiter fails open: availability of the API outranks
exact accounting, and the gateway's other dependencies (sessions) share that store anyway.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable

from autoglm.core.errors import AutoGLMError, ConflictError, RateLimitError
from autoglm.core.schemas import STATESTORE
from autoglm.core.sidecar import StateAPI

log = logging.getLogger(__name__)

#: Charges ``(tenant, tokens)`` served; see ``TokenAccounting``.
ChargeTokens = Callable[[str, int], None]

WINDOW_S = 60
#: Keys outlive their window a little, for clock skew between replicas.
KEY_TTL_S = 2 * WINDOW_S
#: Conditional writes tried per spend before giving up on a hot counter.
MAX_ATTEMPTS = 8


class RateLimiter:
    def __init__(
        self,
        state: StateAPI,
        *,
        requests_per_min: int,
        tokens_per_min: int,
        clock: Callable[[], float] = time.time,
        store: str = STATESTORE,
    ) -> None:
        self.state = state
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self.store = store
        self._clock = clock

    def check_request(self, tenant: str) -> None:
        """Admit one request of ``tenant`` or raise ``RateLimitError``. 0 = unlimited."""
        # Tokens first: a request refused for tokens must not also spend a request.
        if self.tokens_per_min > 0 and self._used(tenant, "tokens") >= self.tokens_per_min:
            raise self._limited("tokens", self.tokens_per_min)
        if self.requests_per_min > 0:
            self._spend(tenant, "requests", 1, self.requests_per_min, refuse_over=True)

    def record_tokens(self, tenant: str, tokens: int) -> None:
        """Charge tokens already served; the tenant's next request is refused once this
        minute's budget is spent (a generation is never cut for it)."""
        if self.tokens_per_min > 0 and tokens > 0:
            self._spend(tenant, "tokens", tokens, self.tokens_per_min, refuse_over=False)

    # -- internals -----------------------------------------------------------------------
    def _key(self, tenant: str, kind: str) -> str:
        return f"ratelimit:{tenant}:{kind}:{int(self._clock() // WINDOW_S)}"

    def _used(self, tenant: str, kind: str) -> int:
        try:
            entry = self.state.get_state(self._key(tenant, kind), store=self.store)
        except AutoGLMError as exc:
            log.warning("rate limit store unavailable; allowing", extra={"reason": exc.message})
            return 0
        return int(entry.value) if entry is not None else 0

    def _spend(self, tenant: str, kind: str, amount: int, limit: int, *, refuse_over: bool) -> None:
        key = self._key(tenant, kind)
        for attempt in range(MAX_ATTEMPTS):
            try:
                entry = self.state.get_state(key, store=self.store)
                used = int(entry.value) if entry is not None else 0
                if refuse_over and used + amount > limit:
                    raise self._limited(kind, limit)
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
                # Another replica spent concurrently: re-read after a short random pause,
                # so that the contenders do not collide again in lockstep.
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            except RateLimitError:
                raise
            except AutoGLMError as exc:
                log.warning("rate limit store unavailable; allowing", extra={"reason": exc.message})
                return
        log.warning("rate limit counter %s too contended; refusing", key)
        raise self._limited(kind, limit)

    def _limited(self, kind: str, limit: int) -> RateLimitError:
        retry_after = max(1, WINDOW_S - int(self._clock() % WINDOW_S))
        return RateLimitError(
            f"rate limit of {limit} {kind} per minute exceeded; retry in {retry_after}s",
            details={"limit": kind},
            retry_after=retry_after,
        )


class TokenAccounting:
    """The one way served tokens reach a tenant's budget: JSON replies (guards), streams
    when they end and job results when stored. Accounting never fails the work it
    counts, so errors are logged by the limiter and swallowed here."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def __call__(self, tenant: str, tokens: int) -> None:
        with contextlib.suppress(AutoGLMError):
            self.limiter.record_tokens(tenant, tokens)
