"""Authenticator: JWT validation, algorithm pinning, API keys by hash, key caching."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from autoglm.core.errors import AuthenticationError, UnavailableError
from autoglm.gateway.security.auth import Authenticator
from autoglm.gateway.security.principal import Principal
from autoglm.gateway.security.tokens import api_key_hash, mint_token, new_api_key

HS_KEY = "unit-test-hs256-key-" + "0123456789abcdef" * 3
ED_PRIVATE = ed25519.Ed25519PrivateKey.generate()
RSA_PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: Any) -> str:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


ED_PUBLIC_PEM = _public_pem(ED_PRIVATE)
RSA_PUBLIC_PEM = _public_pem(RSA_PRIVATE)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Secrets:
    """A SecretSource that counts reads and can be made to fail."""

    def __init__(self, **secrets: dict[str, str]) -> None:
        self.secrets = secrets
        self.reads = 0
        self.down = False

    def get_secret(self, store: str, name: str) -> dict[str, str]:
        assert store == "vault"
        self.reads += 1
        if self.down:
            raise UnavailableError("Dapr sidecar is not reachable")
        if name not in self.secrets:
            raise UnavailableError(f"secret {store}/{name}: Dapr error 500 ERR_SECRET_GET")
        return dict(self.secrets[name])


def jwt_secret(**extra: str) -> dict[str, str]:
    return {"hs256-key": HS_KEY, "issuer": "autoglm-dev", "audience": "autoglm", **extra}


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "tenant": "acme",
        "role": "user",
        "iss": "autoglm-dev",
        "aud": "autoglm",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs(key: str = HS_KEY, **over: Any) -> str:
    return "Bearer " + jwt.encode(claims(**over), key, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand, as an attacker would (PyJWT refuses to make these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"Bearer {signing_input}.{_b64(signature)}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, **secrets: dict[str, str]) -> tuple[Authenticator, Secrets]:
    source = Secrets(**({"jwt": jwt_secret(), "api-keys": {}} | secrets))
    return Authenticator(source, ttl_s=60, clock=clock), source


def refused(auth: Authenticator, header: str | None, message: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(header)
    assert message in info.value.message
    assert info.value.status == 401


# -- JWT --------------------------------------------------------------------------------
def test_valid_hs256_token(clock: Clock) -> None:
    auth, _ = make(clock)
    assert auth.authenticate(hs()) == Principal("acme", "alice", "user", "jwt")


def test_minted_dev_token_is_accepted(clock: Clock) -> None:
    auth, _ = make(clock)
    token = mint_token(jwt_secret(), tenant="t-1", role="admin")
    assert auth.authenticate(f"Bearer {token}") == Principal("t-1", "admin@t-1", "admin", "jwt")


@pytest.mark.parametrize(
    ("alg", "private", "entry"),
    [("EdDSA", ED_PRIVATE, "eddsa-public-key"), ("RS256", RSA_PRIVATE, "rs256-public-key")],
)
def test_valid_asymmetric_tokens(clock: Clock, alg: str, private: Any, entry: str) -> None:
    auth, _ = make(clock, jwt=jwt_secret(**{entry: _public_pem(private)}))
    token = jwt.encode(claims(role="service"), private, algorithm=alg)
    assert auth.authenticate(f"Bearer {token}").role == "service"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("Basic dXNlcjpwdw==", "malformed Authorization header"),
        ("Bearer", "malformed Authorization header"),
        ("Bearer a b", "malformed Authorization header"),
        ("Bearer " + "x" * 9000, "credential too long"),
        ("Bearer not.a.jwt", "malformed token"),
    ],
)
def test_malformed_headers(clock: Clock, header: str | None, message: str) -> None:
    auth, _ = make(clock)
    refused(auth, header, message)


def test_scheme_is_case_insensitive(clock: Clock) -> None:
    auth, _ = make(clock)
    assert auth.authenticate(hs().replace("Bearer", "bearer")).tenant == "acme"


def test_expired_token(clock: Clock) -> None:
    auth, _ = make(clock)
    refused(auth, hs(exp=int(time.time()) - 120), "token expired")


def test_expiry_within_leeway_is_accepted(clock: Clock) -> None:
    auth, _ = make(clock)
    assert auth.authenticate(hs(exp=int(time.time()) - 5)).subject == "alice"


def test_token_not_yet_valid(clock: Clock) -> None:
    auth, _ = make(clock)
    refused(auth, hs(nbf=int(time.time()) + 300), "token not yet valid")


def test_wrong_audience(clock: Clock) -> None:
    auth, _ = make(clock)
    refused(auth, hs(aud="someone-else"), "wrong audience")


def test_wrong_issuer(clock: Clock) -> None:
    auth, _ = make(clock)
    refused(auth, hs(iss="evil"), "wrong issuer")


@pytest.mark.parametrize("claim", ["exp", "sub", "aud", "iss"])
def test_required_claims(clock: Clock, claim: str) -> None:
    auth, _ = make(clock)
    refused(auth, hs(**{claim: None}), f"lacks the '{claim}' claim")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"tenant": None}, "no valid tenant"),
        ({"tenant": "acme\n"}, "no valid tenant"),
        ({"tenant": "a:b"}, "no valid tenant"),
        ({"tenant": "x" * 65}, "no valid tenant"),
        ({"tenant": 7}, "no valid tenant"),
        ({"role": "root"}, "unknown role"),
        ({"role": None}, "unknown role"),
    ],
)
def test_tenant_and_role_claims_are_validated(
    clock: Clock, over: dict[str, Any], message: str
) -> None:
    auth, _ = make(clock)
    refused(auth, hs(**over), message)


def test_wrong_key_is_a_bad_signature(clock: Clock) -> None:
    auth, _ = make(clock)
    refused(auth, hs(key="another-key-of-sufficient-length-0123456789"), "signature is invalid")


def test_tampered_payload_is_a_bad_signature(clock: Clock) -> None:
    auth, _ = make(clock)
    header, payload, signature = hs().removeprefix("Bearer ").split(".")
    evil = json.loads(base64.urlsafe_b64decode(payload + "=="))
    evil["tenant"], evil["role"] = "other", "admin"
    refused(auth, f"Bearer {header}.{_b64(json.dumps(evil).encode())}.{signature}", "signature")


def test_tampered_signature(clock: Clock) -> None:
    auth, _ = make(clock)
    token = hs()
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    refused(auth, flipped, "signature is invalid")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_rejected(clock: Clock, alg: str) -> None:
    auth, _ = make(clock)
    refused(auth, forged({"alg": alg, "typ": "JWT"}, claims(), None), "unsupported token algorithm")


@pytest.mark.parametrize(
    ("entry", "pem"), [("rs256-public-key", RSA_PUBLIC_PEM), ("eddsa-public-key", ED_PUBLIC_PEM)]
)
def test_hs256_signed_with_the_public_key_is_rejected(clock: Clock, entry: str, pem: str) -> None:
    """Algorithm confusion: the public key is public, so an HMAC made with it proves nothing."""
    token = forged({"alg": "HS256", "typ": "JWT"}, claims(role="admin"), pem.encode())
    with_hs, _ = make(clock, jwt=jwt_secret(**{entry: pem}))
    refused(with_hs, token, "signature is invalid")
    only_public = {"issuer": "autoglm-dev", "audience": "autoglm", entry: pem}
    without_hs, _ = make(clock, jwt=only_public)
    refused(without_hs, token, "unsupported token algorithm 'HS256'")


def test_algorithm_without_a_key_is_unsupported(clock: Clock) -> None:
    auth, _ = make(clock, jwt=jwt_secret(**{"rs256-public-key": RSA_PUBLIC_PEM}))
    refused(auth, "Bearer " + jwt.encode(claims(), ED_PRIVATE, algorithm="EdDSA"), "'EdDSA'")
    refused(auth, "Bearer " + jwt.encode(claims(), HS_KEY, algorithm="HS512"), "'HS512'")


def test_key_of_the_wrong_kind_is_ignored(clock: Clock) -> None:
    """An RSA key stored as the EdDSA key must not verify anything as EdDSA."""
    auth, _ = make(clock, jwt=jwt_secret(**{"eddsa-public-key": RSA_PUBLIC_PEM}))
    refused(auth, "Bearer " + jwt.encode(claims(), ED_PRIVATE, algorithm="EdDSA"), "unsupported")
    assert auth.authenticate(hs()).tenant == "acme"


def test_jwt_refused_when_issuer_or_audience_is_not_configured(clock: Clock) -> None:
    auth, _ = make(clock, jwt={"hs256-key": HS_KEY, "issuer": "autoglm-dev"})
    refused(auth, hs(), "not configured")


# -- API keys ---------------------------------------------------------------------------
def test_api_key_by_hash(clock: Clock) -> None:
    key, digest, entry = new_api_key(tenant="acme", role="service", subject="billing")
    auth, source = make(clock, **{"api-keys": {digest: entry}})
    assert key.startswith("agk_") and key not in json.dumps(source.secrets)
    assert auth.authenticate(f"Bearer {key}") == Principal("acme", "billing", "service", "api_key")


def test_api_key_without_subject_is_named_by_its_hash(clock: Clock) -> None:
    digest = api_key_hash("k-123")
    auth, _ = make(clock, **{"api-keys": {digest: "acme:user"}})
    assert auth.authenticate("Bearer k-123").subject == f"api-key:{digest[:12]}"


def test_unknown_api_key(clock: Clock) -> None:
    auth, _ = make(clock, **{"api-keys": {api_key_hash("good"): "acme:user:svc"}})
    refused(auth, "Bearer bad", "unknown API key")


def test_api_key_with_a_bad_entry_is_refused(clock: Clock) -> None:
    auth, _ = make(clock, **{"api-keys": {api_key_hash("k"): "acme:superuser:x"}})
    refused(auth, "Bearer k", "unknown role")


def test_missing_api_keys_secret_leaves_jwt_working(clock: Clock) -> None:
    source = Secrets(jwt=jwt_secret())
    auth = Authenticator(source, clock=clock)
    assert auth.authenticate(hs()).tenant == "acme"
    refused(auth, "Bearer some-key", "unknown API key")


# -- caching and rotation ---------------------------------------------------------------
def test_keys_are_cached_for_the_ttl(clock: Clock) -> None:
    auth, source = make(clock)
    for _ in range(5):
        auth.authenticate(hs())
    assert source.reads == 2  # jwt + api-keys, once
    clock.now += 61
    auth.authenticate(hs())
    assert source.reads == 4


def test_revoked_key_stops_working_after_the_ttl(clock: Clock) -> None:
    key, digest, entry = new_api_key(tenant="acme", role="user", subject="ci")
    auth, source = make(clock, **{"api-keys": {digest: entry}})
    old_token = hs()
    auth.authenticate(f"Bearer {key}")
    source.secrets["api-keys"] = {}
    source.secrets["jwt"] = jwt_secret(**{"hs256-key": "rotated-key-0123456789abcdef0123456789"})
    clock.now += 30
    auth.authenticate(f"Bearer {key}")  # still cached
    auth.authenticate(old_token)
    clock.now += 31
    refused(auth, f"Bearer {key}", "unknown API key")
    refused(auth, old_token, "signature is invalid")


def test_rotated_signing_key_is_picked_up_on_first_failure(clock: Clock) -> None:
    auth, source = make(clock)
    auth.authenticate(hs())
    new_key = "rotated-key-0123456789abcdef0123456789"
    source.secrets["jwt"] = jwt_secret(**{"hs256-key": new_key})
    clock.now += 2
    assert auth.authenticate(hs(key=new_key)).tenant == "acme"


def test_new_api_key_is_picked_up_on_first_use(clock: Clock) -> None:
    auth, source = make(clock)
    auth.authenticate(hs())
    key, digest, entry = new_api_key(tenant="acme", role="user", subject="new")
    source.secrets["api-keys"] = {digest: entry}
    clock.now += 2
    assert auth.authenticate(f"Bearer {key}").subject == "new"


def test_bad_credentials_do_not_hammer_the_secret_store(clock: Clock) -> None:
    auth, source = make(clock)
    auth.authenticate(hs())
    clock.now += 5
    for _ in range(20):
        refused(auth, "Bearer wrong-key", "unknown API key")
    assert source.reads == 4  # first load + one forced re-read
    refused(auth, hs(exp=int(time.time()) - 120), "expired")  # not a rotation symptom
    assert source.reads == 4


def test_secret_store_outage_keeps_the_cached_keys(clock: Clock) -> None:
    auth, source = make(clock)
    auth.authenticate(hs())
    source.down = True
    clock.now += 120
    assert auth.authenticate(hs()).tenant == "acme"
    reads = source.reads
    auth.authenticate(hs())  # no retry before the back-off has passed
    assert source.reads == reads
    source.down = False
    clock.now += 6
    auth.authenticate(hs())
    assert source.reads == reads + 2


def test_no_keys_at_all_is_unavailable_not_unauthenticated(clock: Clock) -> None:
    auth, source = make(clock)
    source.down = True
    with pytest.raises(UnavailableError):
        auth.authenticate(hs())


def test_a_verified_token_is_remembered_until_it_expires(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, _ = make(clock)
    token = hs(exp=int(time.time()) + 60)
    calls = 0
    real = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    for _ in range(3):
        assert auth.authenticate(token) == Principal("acme", "alice", "user", "jwt")
    assert calls == 1
    assert auth.authenticate(hs(sub="bob")).subject == "bob"  # another token: its own
    assert calls == 2
    later = time.time() + 60 + auth.leeway_s + 1
    monkeypatch.setattr(time, "time", lambda: later)
    refused(auth, token, "token expired")


def test_remembered_tokens_go_with_the_keys(clock: Clock) -> None:
    auth, source = make(clock)
    token = hs()
    auth.authenticate(token)
    source.secrets["jwt"] = jwt_secret(**{"hs256-key": "rotated-key-0123456789abcdef0123456789"})
    clock.now += 61  # the keys are re-read: what the old ones verified is forgotten
    refused(auth, token, "signature is invalid")
