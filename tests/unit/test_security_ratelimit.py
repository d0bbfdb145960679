"""Rate limiter: fixed per-minute windows in the state store; requests claim numbered
slots (exact, never refused for contention), tokens are ETag-safe counters."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from autoglm.core.errors import RateLimitError, UnavailableError
from autoglm.core.sidecar import StateEntry
from autoglm.gateway.security.ratelimit import RateLimiter, TokenAccounting
from tests.support.fakes import FakeSidecar

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def admitted(sidecar: FakeSidecar, scope: str = "acme") -> int:
    """Slots claimed in the T0 window: the requests admitted."""
    prefix = f"ratelimit:{scope}:requests:{int(T0 // 60)}:"
    return sum(1 for k in sidecar.state if k.startswith(prefix) and not k.endswith(":next"))


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
    assert admitted(sidecar) == 3


def test_refused_requests_are_not_counted(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = limiter(sidecar, clock, rpm=1)
    rl.check_request("acme")
    for _ in range(3):
        with pytest.raises(RateLimitError):
            rl.check_request("acme")
    assert admitted(sidecar) == 1


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
    assert admitted(sidecar) == 0


def test_keys_expire(clock: Clock) -> None:
    saved: list[dict[str, Any]] = []

    class Recording(FakeSidecar):
        def save_state(self, key: str, value: Any, **kw: Any) -> None:
            saved.append({"key": key, **kw})
            super().save_state(key, value, **kw)

    limiter(Recording(), clock).check_request("acme")
    assert saved[0]["key"].startswith("ratelimit:acme:requests:")
    assert saved[0]["ttl_s"] == 120 and saved[0]["create_only"] is True


class ClaimingRival(FakeSidecar):
    """Another replica claims the slot we are about to claim, ``races`` times."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.claims = 0

    def save_state(self, key: str, value: Any, **kw: Any) -> None:
        if kw.get("create_only") and self.races > 0:
            self.races -= 1
            super().save_state(key, "rival", **kw)  # the rival wins this slot
        if kw.get("create_only"):
            self.claims += 1
        super().save_state(key, value, **kw)


def test_a_slot_taken_concurrently_moves_on_to_the_next(clock: Clock) -> None:
    sidecar = ClaimingRival(races=3)
    limiter(sidecar, clock, rpm=10).check_request("acme")
    # Three slots went to the rival, ours is the fourth: nothing refused, nothing lost.
    assert admitted(sidecar) == 4 and sidecar.claims == 4


def test_the_rival_that_takes_the_last_slot_wins_and_we_are_refused(clock: Clock) -> None:
    sidecar = ClaimingRival(races=1)
    with pytest.raises(RateLimitError):
        limiter(sidecar, clock, rpm=1).check_request("acme")
    assert admitted(sidecar) == 1


def test_contention_alone_never_refuses_while_slots_are_left(clock: Clock) -> None:
    sidecar = ClaimingRival(races=500)
    limiter(sidecar, clock, rpm=600).check_request("acme")
    assert admitted(sidecar) == 501


def test_a_spent_window_is_refused_without_a_store_round_trip(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = limiter(sidecar, clock, rpm=1)
    rl.check_request("acme")
    with pytest.raises(RateLimitError):
        rl.check_request("acme")
    sidecar.fail_state = UnavailableError("would fail open if asked")
    with pytest.raises(RateLimitError):
        rl.check_request("acme")
    clock.now += 60
    sidecar.fail_state = None
    rl.check_request("acme")


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
    served: list[int] = []

    def hammer(rl: RateLimiter) -> None:
        for _ in range(15):
            try:
                rl.check_request("acme")
                served.append(1)
            except RateLimitError:
                pass

    threads = [threading.Thread(target=hammer, args=(rl,)) for rl in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted(sidecar) == len(served) == 20  # exact: all 20, never more


def test_store_outage_fails_open(clock: Clock) -> None:
    """With the store down, requests over the budget are admitted (availability
    outranks exact limits) and charges are dropped, not raised; once it is back, the
    budget counts again."""
    sidecar = FakeSidecar()
    sidecar.fail_state = UnavailableError("Dapr sidecar is not reachable")
    rl = limiter(sidecar, clock, rpm=1, tpm=1)
    outcomes = []
    for _ in range(3):
        try:
            rl.check_request("acme")
            outcomes.append("admitted")
        except RateLimitError:
            outcomes.append("refused")
    rl.record_tokens("acme", 5)
    assert outcomes == ["admitted"] * 3 and sidecar.state == {}
    sidecar.fail_state = None
    rl.check_request("acme")
    with pytest.raises(RateLimitError):
        rl.check_request("acme")
    assert admitted(sidecar) == 1


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
    # A counter too contended to update: the charge is given up (logged), never raised.
    hot = limiter(Racing(FakeSidecar(), races=10**6), clock, rpm=0, tpm=10)
    hot.record_tokens("acme", 5)
    TokenAccounting(hot)("acme", 5)


def test_concurrent_token_charges_are_retried_not_lost(clock: Clock) -> None:
    sidecar = FakeSidecar()
    racing = Racing(sidecar, races=3)
    limiter(racing, clock, rpm=0, tpm=100).record_tokens("acme", 10)
    # Three charges of 1 by the other replica plus ours: nothing overwritten.
    assert sidecar.state[f"ratelimit:acme:tokens:{int(T0 // 60)}"][0] == 13


def test_unauthenticated_requests_are_limited_per_address(clock: Clock) -> None:
    sidecar = FakeSidecar()
    rl = RateLimiter(
        sidecar, requests_per_min=0, tokens_per_min=0, anonymous_requests_per_min=2, clock=clock
    )
    for _ in range(2):
        assert not rl.anonymous_spent("10.0.0.1")
        rl.check_anonymous("10.0.0.1")
    with pytest.raises(RateLimitError) as info:
        rl.check_anonymous("10.0.0.1")
    assert info.value.retry_after == 60
    assert rl.anonymous_spent("10.0.0.1") and not rl.anonymous_spent("10.0.0.2")
    rl.check_anonymous("fe80::1%eth0")  # any address text makes a safe key
    clock.now += 60
    assert not rl.anonymous_spent("10.0.0.1")
