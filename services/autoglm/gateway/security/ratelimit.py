"""Per-tenant request and token budgets per minute, shared by all gateway replicas.

Counters live in the Dapr state store under ``ratelimit:{tenant}:{kind}:{minute}``
(fixed one-minute windows, expiring by TTL) and are updated with ETags, retrying a
bounded number of times on a concurrent update; so two replicas never both spend the
last unit. When the store is unreachable the limiter fails open: availability of the
API outranks exact accounting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from autoglm.core.errors import AutoGLMError, ConflictError, RateLimitError
from autoglm.core.sidecar import StateEntry

log = logging.getLogger(__name__)

_RETRIES = 8


class StateStore(Protocol):
    def get_state(self, key: str, store: str = ...) -> StateEntry | None: ...

    def save_state(
        self,
        key: str,
        value: Any,
        etag: str | None = ...,
        store: str = ...,
        create_only: bool = ...,
        ttl_s: int | None = ...,
    ) -> None: ...


class RateLimiter:
    def __init__(
        self,
        state: StateStore,
        *,
        requests_per_min: int,
        tokens_per_min: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self._clock = clock

    def check_request(self, tenant: str) -> None:
        """Spend one request, or raise ``RateLimitError`` if this minute's are gone."""
        if self.requests_per_min > 0:
            self._spend(tenant, "requests", 1, self.requests_per_min, refuse_over=True)
        if self.tokens_per_min > 0:
            used = self._used(tenant, "tokens")
            if used >= self.tokens_per_min:
                raise self._limited("tokens", self.tokens_per_min)

    def record_tokens(self, tenant: str, tokens: int) -> None:
        """Charge tokens already served; the next request is refused once over budget."""
        if self.tokens_per_min > 0 and tokens > 0:
            self._spend(tenant, "tokens", tokens, self.tokens_per_min, refuse_over=False)

    # -- internals -----------------------------------------------------------------------
    def _key(self, tenant: str, kind: str) -> str:
        return f"ratelimit:{tenant}:{kind}:{int(self._clock() // 60)}"

    def _used(self, tenant: str, kind: str) -> int:
        try:
            entry = self.state.get_state(self._key(tenant, kind))
        except AutoGLMError as exc:
            log.warning("rate limit store unavailable; allowing", extra={"reason": exc.message})
            return 0
        return int(entry.value) if entry is not None else 0

    def _spend(self, tenant: str, kind: str, amount: int, limit: int, *, refuse_over: bool) -> None:
        key = self._key(tenant, kind)
        try:
            for _ in range(_RETRIES):
                entry = self.state.get_state(key)
                used = int(entry.value) if entry is not None else 0
                if refuse_over and used + amount > limit:
                    raise self._limited(kind, limit)
                try:
                    self.state.save_state(
                        key,
                        used + amount,
                        etag=entry.etag if entry is not None else None,
                        create_only=entry is None,
                        ttl_s=120,
                    )
                    return
                except ConflictError:
                    continue  # another replica spent concurrently; re-read
        except RateLimitError:
            raise
        except AutoGLMError as exc:
            log.warning("rate limit store unavailable; allowing", extra={"reason": exc.message})
            return
        # Heavy contention on one tenant's counter: refuse rather than over-admit.
        raise self._limited(kind, limit)

    def _limited(self, kind: str, limit: int) -> RateLimitError:
        retry_after = max(1, 60 - int(self._clock() % 60))
        return RateLimitError(
            f"rate limit of {limit} {kind} per minute exceeded; retry in {retry_after}s",
            details={"retry_after": retry_after},
        )
