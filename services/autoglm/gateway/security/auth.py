"""Bearer authentication: JWTs (HS256, EdDSA, RS256) or API keys, keys from Vault.

Key material is read through the Dapr secret store and cached for ``ttl_s``, so a
rotated key takes effect without a restart. A credential that fails in a way a rotation
could explain (bad signature, unknown key or algorithm, changed issuer) makes the keys be
re-read once before it is refused, at most once a second so that garbage tokens cannot
hammer Vault. When Vault cannot be read the cached keys stay in use: an outage of the
secret store must not log every client out.

The algorithm is fixed by the key that verifies it, never by the token: ``alg: none`` and
an HS256 token "signed" with a public key (algorithm confusion) find no key and fail.
API keys exist only as SHA-256 hashes mapping to ``tenant:role:subject``.

A verified JWT is remembered, by its exact text, with the keys that verified it: until
it expires (its ``exp`` and the leeway, checked on every use) or the keys are re-read
(every ``ttl_s``, or on a failure a rotation could explain), whichever comes first. A
client sends the same token with every request, and verifying it (decode, claims,
signature) was ~8 % of the gateway's CPU per chat request (issue 15); what a token
grants is fixed by its signed claims, so the remembered principal is the one a fresh
verification would give until then.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from autoglm.core.errors import AuthenticationError, AutoGLMError
from autoglm.gateway.security.principal import Principal, is_role, is_tenant

log = logging.getLogger(__name__)

#: Entries of the ``jwt`` secret holding public keys, by the one algorithm each may verify.
PUBLIC_KEY_ENTRIES = {"EdDSA": "eddsa-public-key", "RS256": "rs256-public-key"}
#: Longer bearer values are refused before any parsing.
MAX_CREDENTIAL_LEN = 8192
#: Least time between two re-reads of the keys forced by failed verifications.
MIN_REFRESH_INTERVAL_S = 1.0
#: After a failed re-read, how long the cached keys are used before trying again.
RETRY_AFTER_FAILED_LOAD_S = 5.0
#: Verified JWTs remembered per key set (the oldest is forgotten first).
VERIFIED_TOKENS = 4096


class SecretSource(Protocol):
    def get_secret(self, store: str, name: str) -> dict[str, str]: ...


class _KeyMismatch(AuthenticationError):
    """A failure that newer keys could resolve; triggers one re-read before refusing."""


@dataclass(frozen=True)
class _Keys:
    issuer: str
    audience: str
    #: algorithm -> the one key verifying it (HS256 secret bytes or a public key object)
    verifiers: dict[str, Any]
    #: sha256 hex of an API key -> "tenant:role:subject"
    api_keys: dict[str, str]
    loaded_at: float
    #: token -> (its principal, the wall-clock time it expires at, leeway included):
    #: JWTs these keys verified, so that they are verified once, not on every request.
    verified: dict[str, tuple[Principal, float]] = field(default_factory=dict)


@dataclass
class Authenticator:
    secrets: SecretSource
    _: KW_ONLY
    store: str = "vault"
    secret_name: str = "jwt"
    api_keys_secret: str = "api-keys"
    ttl_s: float = 60.0
    leeway_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _keys: _Keys | None = field(default=None, init=False)
    _next_load: float = field(default=0.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an ``Authorization`` header value, or AuthenticationError."""
        credential = _bearer_credential(authorization)
        keys = self._current_keys()
        try:
            return self._verify(credential, keys)
        except _KeyMismatch:
            fresh = self._refresh(keys)
            if fresh is keys:
                raise
            return self._verify(credential, fresh)

    # -- keys ---------------------------------------------------------------------------
    def _current_keys(self) -> _Keys:
        keys = self._keys
        if keys is None:
            with self._lock:
                if self._keys is None:
                    # Nothing cached: no way to authenticate, so a failure propagates (503).
                    self._store(self._load())
                assert self._keys is not None
                return self._keys
        if self.clock() >= self._next_load and self._lock.acquire(blocking=False):
            # One thread re-reads; the others go on with the cached keys meanwhile.
            try:
                if self._keys is keys:
                    self._reload_or_keep()
            finally:
                self._lock.release()
        return self._keys or keys

    def _refresh(self, seen: _Keys) -> _Keys:
        """Newer keys than ``seen`` if a re-read is due and works, else ``seen``."""
        with self._lock:
            current = self._keys or seen
            if current is not seen:  # another request already re-read them
                return current
            if self.clock() - seen.loaded_at < MIN_REFRESH_INTERVAL_S:
                return seen
            return self._reload_or_keep()

    def _reload_or_keep(self) -> _Keys:
        cached = self._keys
        assert cached is not None
        try:
            self._store(self._load(cached))
        except AutoGLMError as exc:
            log.warning(
                "cannot re-read auth keys; using the cached ones", extra={"reason": exc.message}
            )
            self._next_load = self.clock() + min(RETRY_AFTER_FAILED_LOAD_S, self.ttl_s)
        return self._keys or cached

    def _store(self, keys: _Keys) -> None:
        self._keys = keys
        self._next_load = keys.loaded_at + self.ttl_s

    def _load(self, previous: _Keys | None = None) -> _Keys:
        secret = self.secrets.get_secret(self.store, self.secret_name)
        verifiers: dict[str, Any] = {}
        if secret.get("hs256-key"):
            verifiers["HS256"] = secret["hs256-key"].encode()
        for alg, entry in PUBLIC_KEY_ENTRIES.items():
            if secret.get(entry):
                key = _public_key(alg, secret[entry])
                if key is None:
                    log.error("ignoring unusable %s in secret %s", entry, self.secret_name)
                else:
                    verifiers[alg] = key
        try:
            api_keys = self.secrets.get_secret(self.store, self.api_keys_secret)
        except AutoGLMError as exc:
            # Deployments without API keys have no such secret; a transient failure keeps
            # the hashes read before.
            log.warning("cannot read API key hashes", extra={"reason": exc.message})
            api_keys = previous.api_keys if previous else {}
        return _Keys(
            issuer=secret.get("issuer", ""),
            audience=secret.get("audience", ""),
            verifiers=verifiers,
            api_keys=api_keys,
            loaded_at=self.clock(),
        )

    # -- verification -------------------------------------------------------------------
    def _verify(self, credential: str, keys: _Keys) -> Principal:
        # A JWT is three base64url parts; API keys never contain a dot.
        if credential.count(".") == 2:
            return self._verify_jwt(credential, keys)
        return _verify_api_key(credential, keys)

    def _verify_jwt(self, token: str, keys: _Keys) -> Principal:
        known = keys.verified.get(token)
        if known is not None:
            principal, expires = known
            if time.time() < expires:
                return principal
            keys.verified.pop(token, None)
            raise AuthenticationError("token expired")
        principal, expires = self._decode_jwt(token, keys)
        if len(keys.verified) >= VERIFIED_TOKENS:
            # Another thread may change the dict meanwhile: forgetting is best effort.
            with contextlib.suppress(StopIteration, KeyError, RuntimeError):
                del keys.verified[next(iter(keys.verified))]
        keys.verified[token] = (principal, expires)
        return principal

    def _decode_jwt(self, token: str, keys: _Keys) -> tuple[Principal, float]:
        """The principal of a token these keys verify, and when it expires."""
        if not (keys.issuer and keys.audience):
            # Fail closed: without both, tokens for any audience would be accepted.
            raise _KeyMismatch("JWT authentication is not configured (issuer/audience)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationError("malformed token") from None
        alg = str(header.get("alg"))
        key = keys.verifiers.get(alg)
        if key is None:
            # "none", HS384, ... and any algorithm we hold no key for.
            raise _KeyMismatch(f"unsupported token algorithm {alg!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],  # exactly the key's algorithm
                audience=keys.audience,
                issuer=keys.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise _KeyMismatch("token has the wrong audience") from None
        except jwt.InvalidIssuerError:
            raise _KeyMismatch("token has the wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise _KeyMismatch("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise AuthenticationError("malformed token") from None
        principal = _principal(claims.get("tenant"), claims.get("role"), claims["sub"], "jwt")
        # PyJWT refuses once ``exp <= now - leeway``.
        return principal, float(claims["exp"]) + self.leeway_s


def _bearer_credential(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError("missing Authorization header (expected 'Bearer <token>')")
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise AuthenticationError("malformed Authorization header (expected 'Bearer <token>')")
    if len(credential) > MAX_CREDENTIAL_LEN:
        raise AuthenticationError("malformed Authorization header (credential too long)")
    return credential


def _verify_api_key(key: str, keys: _Keys) -> Principal:
    digest = hashlib.sha256(key.encode()).hexdigest()
    entry = keys.api_keys.get(digest)
    if entry is None:
        raise _KeyMismatch("unknown API key")
    tenant, _, rest = entry.partition(":")
    role, _, subject = rest.partition(":")
    # The hash prefix names the key in audit events without revealing it.
    return _principal(tenant, role, subject or f"api-key:{digest[:12]}", "api_key")


def _principal(
    tenant: Any, role: Any, subject: Any, method: Literal["jwt", "api_key"]
) -> Principal:
    if not isinstance(tenant, str) or not is_tenant(tenant):
        raise AuthenticationError("credential carries no valid tenant")
    if not isinstance(role, str) or not is_role(role):
        raise AuthenticationError(f"credential carries an unknown role {role!r}")
    if not isinstance(subject, str) or not subject:
        raise AuthenticationError("credential carries no subject")
    return Principal(tenant=tenant, subject=subject, role=role, method=method)


def _public_key(alg: str, pem: str) -> Any:
    """The key object for ``alg`` from PEM, or None when it is not a key of that kind."""
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        return None
    if alg == "EdDSA" and isinstance(key, Ed25519PublicKey):
        return key
    if alg == "RS256" and isinstance(key, RSAPublicKey) and key.key_size >= 2048:
        return key
    return None
