"""Security policies against the real stack: keys from Vault through daprd's secret store
(rotation picked up after the TTL), rate-limit counters in Redis through daprd's state API."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import hvac
import pytest

from autoglm.cli import main as cli_main
from autoglm.core.errors import AuthenticationError, RateLimitError
from autoglm.core.sidecar import Sidecar
from autoglm.devstack.backing import VAULT_MOUNT, VAULT_PREFIX
from autoglm.gateway.security.auth import Authenticator
from autoglm.gateway.security.principal import Principal
from autoglm.gateway.security.ratelimit import RateLimiter
from autoglm.gateway.security.tokens import mint_token, new_api_key
from tests.support.stack import Backing

ISSUER = {"issuer": "autoglm-itest", "audience": "autoglm"}


class VaultSecrets:
    """Writes this test's own secrets, leaving the seeded ``jwt`` to the other tests."""

    def __init__(self, backing: Backing) -> None:
        self.client = hvac.Client(url=backing.vault_addr, token=backing.vault_token)
        self.suffix = uuid.uuid4().hex[:8]
        self.jwt_name = f"jwt-{self.suffix}"
        self.api_keys_name = f"api-keys-{self.suffix}"

    def write(self, name: str, data: dict[str, str]) -> None:
        self.client.secrets.kv.v2.create_or_update_secret(
            path=f"{VAULT_PREFIX}/{name}", secret=data, mount_point=VAULT_MOUNT
        )

    def rotate(self, hs256_key: str, api_keys: dict[str, str]) -> None:
        self.write(self.jwt_name, {"hs256-key": hs256_key, **ISSUER})
        self.write(self.api_keys_name, api_keys)

    def authenticator(
        self, sidecar: Sidecar, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> Authenticator:
        return Authenticator(
            sidecar,
            secret_name=self.jwt_name,
            api_keys_secret=self.api_keys_name,
            ttl_s=ttl_s,
            clock=clock,
        )


class FakeClock:
    """Time that moves only when the test says so: cache expiry is asserted exactly,
    however slow the machine is (the key reads themselves are real)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def vault(backing: Backing) -> VaultSecrets:
    return VaultSecrets(backing)


def bearer(hs256_key: str, tenant: str = "acme") -> str:
    token = mint_token({"hs256-key": hs256_key, **ISSUER}, tenant=tenant, role="user")
    return f"Bearer {token}"


def test_rotation_takes_effect_after_the_ttl(sidecar: Sidecar, vault: VaultSecrets) -> None:
    old_key, new_key = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    old_api_key, old_hash, old_entry = new_api_key(tenant="acme", role="service", subject="a")
    new_api, new_hash, new_entry = new_api_key(tenant="acme", role="service", subject="b")
    vault.rotate(old_key, {old_hash: old_entry})
    clock = FakeClock()
    auth = vault.authenticator(sidecar, ttl_s=3.0, clock=clock)
    assert auth.authenticate(bearer(old_key)).tenant == "acme"
    assert auth.authenticate(f"Bearer {old_api_key}").subject == "a"

    vault.rotate(new_key, {new_hash: new_entry})  # the old key and API key are revoked
    clock.now += 2.5  # within the TTL the cached keys still answer
    assert auth.authenticate(bearer(old_key)).tenant == "acme"
    assert auth.authenticate(f"Bearer {old_api_key}").subject == "a"

    clock.now += 0.7  # past the TTL: the next request reloads from Vault
    with pytest.raises(AuthenticationError, match="signature is invalid"):
        auth.authenticate(bearer(old_key))
    with pytest.raises(AuthenticationError, match="unknown API key"):
        auth.authenticate(f"Bearer {old_api_key}")
    assert auth.authenticate(bearer(new_key)).tenant == "acme"
    assert auth.authenticate(f"Bearer {new_api}") == Principal("acme", "b", "service", "api_key")


def test_new_key_is_accepted_before_the_ttl(sidecar: Sidecar, vault: VaultSecrets) -> None:
    """A client holding a token signed with a just-rotated key is not refused for a TTL."""
    first, second = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    vault.rotate(first, {})
    clock = FakeClock()
    auth = vault.authenticator(sidecar, ttl_s=300.0, clock=clock)
    auth.authenticate(bearer(first))
    clock.now += 1.1  # forced re-reads are at most one a second
    vault.rotate(second, {})
    assert auth.authenticate(bearer(second)).tenant == "acme"


def test_cli_token_is_accepted_through_dapr(
    sidecar: Sidecar, backing: Backing, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "--tenant", "acme", "--role", "admin", "--vault-addr", backing.vault_addr]
    argv += ["--vault-token", backing.vault_token]
    assert cli_main(argv) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    principal = Authenticator(sidecar).authenticate(f"Bearer {token}")
    assert principal == Principal("acme", "admin@acme", "admin", "jwt")


# -- rate limits in Redis ---------------------------------------------------------------
def test_request_budget_is_shared_and_expires(sidecar: Sidecar, backing: Backing) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    now = time.time()
    replicas = [
        RateLimiter(sidecar, requests_per_min=5, tokens_per_min=0, clock=lambda: now)
        for _ in range(2)
    ]
    for i in range(5):
        replicas[i % 2].check_request(tenant)
    with pytest.raises(RateLimitError) as info:
        replicas[1].check_request(tenant)
    assert info.value.retry_after is not None and 1 <= info.value.retry_after <= 60

    # One claimed slot per admitted request (ratelimit.py), none beyond the budget.
    base = f"ratelimit:{tenant}:requests:{int(now // 60)}"
    assert all(sidecar.get_state(f"{base}:{n}") is not None for n in range(5))
    assert sidecar.get_state(f"{base}:5") is None
    # daprd's state.redis keeps the key as "<app-id>||<key>", with the TTL we asked for.
    ttl = backing.redis_client().ttl(f"itest||{base}:0")
    assert 0 < ttl <= 120


def test_token_budget(sidecar: Sidecar) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    now = time.time()
    limiter = RateLimiter(sidecar, requests_per_min=0, tokens_per_min=100, clock=lambda: now)
    limiter.check_request(tenant)
    limiter.record_tokens(tenant, 70)
    limiter.check_request(tenant)
    limiter.record_tokens(tenant, 70)
    with pytest.raises(RateLimitError, match="100 tokens per minute"):
        limiter.check_request(tenant)


def test_concurrent_replicas_never_over_admit(sidecar: Sidecar) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    now = time.time()
    admitted: list[int] = []
    port = int(sidecar.base_url.rsplit(":", 1)[1])
    token = sidecar._http.headers["dapr-api-token"]
    clients = [Sidecar(http_port=port, api_token=token) for _ in range(4)]

    def replica(client: Sidecar) -> None:
        limiter = RateLimiter(client, requests_per_min=10, tokens_per_min=0, clock=lambda: now)
        for _ in range(6):
            try:
                limiter.check_request(tenant)
                admitted.append(1)
            except RateLimitError:
                pass

    threads = [threading.Thread(target=replica, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    # Exact: every admitted request holds its own slot, and the budget is all used.
    base = f"ratelimit:{tenant}:requests:{int(now // 60)}"
    slots = [sidecar.get_state(f"{base}:{n}") is not None for n in range(12)]
    assert sum(slots) == len(admitted) == 10
