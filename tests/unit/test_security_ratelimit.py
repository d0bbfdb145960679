"""Rate limiter: fixed per-minute windows in the state store, ETag-safe under contention."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from autoglm.core.errors import RateLimitError, UnavailableError
from autoglm.core.sidecar import StateEntry
from autoglm.gateway.security.ratelimit import MAX_ATTEMPTS, RateLimiter, TokenAccounting
from tests.support.fakes import FakeSidecar

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Racing:
    """Wraps a store so that another replica writes between our read and our write."""

    def __init__(self, inner: FakeSidecar, races: int) -> None:
        self.inner = inner
        self.races = races
        self.saves = 0

    def get_state(self, key: str, store: str = "statestore") -> StateEntry | None:
        entry = self.inner.get_state(key, store)
        if self.races > 0:
            self.races -= 1
            used = int(entry.value) if entry else 0
            self.inner.save_state(key, used + 1, etag=entry.etag if entry else None)
        return entry

    def save_state(self, key: str, value: Any, etag: str | None = None, **kw: Any) -> None:
        self.saves += 1
        self.inner.save_state(key, value, etag=etag, **kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter(store: Any, clock: Clock, rpm: int = 3, tpm: int = 0) -> RateLimiter:
    return RateLimiter(store, requests_per_min=rpm, tokens_per_min=tpm, clock=clock)


def test_requests_per_minute(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = limiter(sidecar, clock)
    clock.now = T0 + 15
    for _ in range(3):
        rl.check_request("acme")
    with pytest.raises(RateLimitError) as info:
        rl.check_request("acme")
    assert info.value.retry_after == 45
    assert info.value.details["retry_after"] == 45
    assert info.value.status == 429 and info.value.code == "rate_limited"
    assert "3 requests per minute" in info.value.message
    assert sidecar.state[f"ratelimit:acme:requests:{int(T0 // 60)}"][0] == 3


def test_refused_requests_are_not_counted(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = limiter(sidecar, clock, rpm=1)
    rl.check_request("acme")
    for _ in range(3):
        with pytest.raises(RateLimitError):
            rl.check_request("acme")
    assert sidecar.state[f"ratelimit:acme:requests:{int(T0 // 60)}"][0] == 1


def test_next_minute_starts_a_new_window(clock: Clock) -> None:
    rl = limiter(FakeSidecar(), clock, rpm=1)
    clock.now = T0 + 59.5
    rl.check_request("acme")
    with pytest.raises(RateLimitError) as info:
        rl.check_request("acme")
    assert info.value.retry_after == 1  # never 0
    clock.now = T0 + 60
    rl.check_request("acme")


def test_tenants_have_separate_budgets(clock: Clock) -> None:
    rl = limiter(FakeSidecar(), clock, rpm=1)
    rl.check_request("acme")
    rl.check_request("globex")
    with pytest.raises(RateLimitError):
        rl.check_request("acme")


def test_zero_means_unlimited(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = limiter(sidecar, clock, rpm=0, tpm=0)
    for _ in range(100):
        rl.check_request("acme")
    rl.record_tokens("acme", 10**9)
    assert sidecar.state == {}


def test_tokens_per_minute(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = limiter(sidecar, clock, rpm=0, tpm=100)
    rl.check_request("acme")
    rl.record_tokens("acme", 60)
    rl.check_request("acme")
    rl.record_tokens("acme", 60)  # a finished generation is charged in full
    assert sidecar.state[f"ratelimit:acme:tokens:{int(T0 // 60)}"][0] == 120
    with pytest.raises(RateLimitError) as info:
        rl.check_request("acme")
    assert "100 tokens per minute" in info.value.message
    assert info.value.details["limit"] == "tokens"
    clock.now += 60
    rl.check_request("acme")


def test_request_refused_for_tokens_spends_no_request(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = limiter(sidecar, clock, rpm=5, tpm=10)
    rl.record_tokens("acme", 10)
    with pytest.raises(RateLimitError):
        rl.check_request("acme")
    assert f"ratelimit:acme:requests:{int(T0 // 60)}" not in sidecar.state


def test_keys_expire(clock: Clock) -> None:
    saved: list[dict[str, Any]] = []

    class Recording(FakeSidecar):
        def save_state(self, key: str, value: Any, **kw: Any) -> None:
            saved.append({"key": key, **kw})
            super().save_state(key, value, **kw)

    limiter(Recording(), clock).check_request("acme")
    assert saved[0]["key"].startswith("ratelimit:acme:requests:")
    assert saved[0]["ttl_s"] == 120 and saved[0]["create_only"] is True


def test_concurrent_update_is_retried_not_lost(clock: Clock) -> None:
    sidecar = FakeSidecar()
    racing = Racing(sidecar, races=3)
    rl = limiter(racing, clock, rpm=10)
    rl.check_request("acme")
    # Three writes by the other replica plus ours: nothing overwritten.
    assert sidecar.state[f"ratelimit:acme:requests:{int(T0 // 60)}"][0] == 4
    assert racing.saves == 4  # three conflicts, then success


def test_concurrent_update_that_spends_the_last_unit_refuses(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = limiter(Racing(sidecar, races=1), clock, rpm=1)
    with pytest.raises(RateLimitError):
        rl.check_request("acme")
    assert sidecar.state[f"ratelimit:acme:requests:{int(T0 // 60)}"][0] == 1


def test_endless_contention_is_bounded_and_refuses(clock: Clock) -> None:
    racing = Racing(FakeSidecar(), races=10**6)
    rl = limiter(racing, clock, rpm=10**9)
    with pytest.raises(RateLimitError):
        rl.check_request("acme")
    assert racing.saves == MAX_ATTEMPTS


def test_threads_sharing_a_counter_never_over_admit(clock: Clock) -> None:
    sidecar = FakeSidecar()
    lock = threading.Lock()

    class Atomic:
        """FakeSidecar with each call atomic, like a real store; calls still interleave."""

        def get_state(self, key: str, store: str = "statestore") -> StateEntry | None:
            with lock:
                return sidecar.get_state(key, store)

        def save_state(self, key: str, value: Any, **kw: Any) -> None:
            with lock:
                sidecar.save_state(key, value, **kw)

    limiters = [limiter(Atomic(), clock, rpm=20) for _ in range(4)]  # four "replicas"
    admitted: list[int] = []

    def hammer(rl: RateLimiter) -> None:
        for _ in range(15):
            try:
                rl.check_request("acme")
                admitted.append(1)
            except RateLimitError:
                pass

    threads = [threading.Thread(target=hammer, args=(rl,)) for rl in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    count = sidecar.state[f"ratelimit:acme:requests:{int(T0 // 60)}"][0]
    assert count == len(admitted) <= 20


def test_store_outage_fails_open(clock: Clock) -> None:
    sidecar = FakeSidecar()
    sidecar.fail_state = UnavailableError("Dapr sidecar is not reachable")
    rl = limiter(sidecar, clock, rpm=1, tpm=1)
    for _ in range(3):
        rl.check_request("acme")
    rl.record_tokens("acme", 5)


def test_retry_after_survives_the_error_payload() -> None:
    from autoglm.core.errors import AutoGLMError

    err = AutoGLMError.from_payload(RateLimitError("slow down", retry_after=7).to_payload())
    assert isinstance(err, RateLimitError) and err.retry_after == 7
    assert RateLimitError("no hint").retry_after is None


def test_token_accounting_charges_the_limiter_and_never_raises(clock: Clock) -> None:
    sidecar = FakeSidecar()
    charge = TokenAccounting(limiter(sidecar, clock, rpm=0, tpm=10))
    charge("acme", 25)  # a finished generation is charged in full, past the budget
    assert sidecar.state[f"ratelimit:acme:tokens:{int(T0 // 60)}"][0] == 25
    with pytest.raises(RateLimitError):
        charge.limiter.check_request("acme")
    # A counter too contended to update makes record_tokens raise; accounting swallows it.
    hot = limiter(Racing(FakeSidecar(), races=10**6), clock, rpm=0, tpm=10)
    with pytest.raises(RateLimitError):
        hot.record_tokens("acme", 5)
    TokenAccounting(hot)("acme", 5)
