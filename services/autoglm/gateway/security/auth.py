"""Bearer authentication: JWTs (HS256, EdDSA, RS256) or API keys, keys from Vault.

Key material is read through the Dapr secret store and cached for ``ttl_s``; when a
token fails verification against cached keys they are re-read once, so a rotated key
is honoured at once and a revoked one within the TTL. The algorithm is chosen by the
key that verifies it, never by the token alone: ``alg: none`` and HS256 tokens signed
with a public key (algorithm confusion) are refused. API keys are stored only as
SHA-256 hashes mapping to ``tenant:role:subject``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from autoglm.core.errors import AuthenticationError
from autoglm.gateway.security.principal import ROLES, TENANT_PATTERN, Principal


class SecretSource(Protocol):
    def get_secret(self, store: str, name: str) -> dict[str, str]: ...


@dataclass(frozen=True)
class _Keys:
    issuer: str
    audience: str
    #: algorithm -> key (HS256 secret, or a public key PEM)
    verifiers: dict[str, str]
    api_keys: dict[str, str]
    loaded_at: float


_PUBLIC_KEY_ENTRIES = {"EdDSA": "eddsa-public-key", "RS256": "rs256-public-key"}


class Authenticator:
    def __init__(
        self,
        secrets: SecretSource,
        *,
        store: str = "vault",
        secret_name: str = "jwt",
        api_keys_secret: str = "api-keys",
        ttl_s: float = 60.0,
        leeway_s: float = 30.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.secrets = secrets
        self.store = store
        self.secret_name = secret_name
        self.api_keys_secret = api_keys_secret
        self.ttl_s = ttl_s
        self.leeway_s = leeway_s
        self._clock = clock
        self._keys: _Keys | None = None
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationError("missing Authorization header (expected 'Bearer <token>')")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationError("malformed Authorization header (expected 'Bearer <token>')")
        keys = self._current_keys()
        try:
            return self._verify(credential, keys)
        except AuthenticationError:
            if self._clock() - keys.loaded_at < 1.0:
                raise
            # Maybe rotated since we cached: re-read once before refusing.
            return self._verify(credential, self._current_keys(force=True))

    # -- keys ---------------------------------------------------------------------------
    def _current_keys(self, force: bool = False) -> _Keys:
        with self._lock:
            keys = self._keys
            if force or keys is None or self._clock() - keys.loaded_at > self.ttl_s:
                keys = self._keys = self._load()
            return keys

    def _load(self) -> _Keys:
        jwt_secret = self.secrets.get_secret(self.store, self.secret_name)
        verifiers = {}
        if jwt_secret.get("hs256-key"):
            verifiers["HS256"] = jwt_secret["hs256-key"]
        for alg, entry in _PUBLIC_KEY_ENTRIES.items():
            if jwt_secret.get(entry):
                verifiers[alg] = jwt_secret[entry]
        try:
            api_keys = self.secrets.get_secret(self.store, self.api_keys_secret)
        except Exception:
            api_keys = {}
        return _Keys(
            issuer=jwt_secret.get("issuer", ""),
            audience=jwt_secret.get("audience", ""),
            verifiers=verifiers,
            api_keys=api_keys,
            loaded_at=self._clock(),
        )

    # -- verification -------------------------------------------------------------------
    def _verify(self, credential: str, keys: _Keys) -> Principal:
        if credential.count(".") == 2:
            return self._verify_jwt(credential, keys)
        return self._verify_api_key(credential, keys)

    def _verify_api_key(self, key: str, keys: _Keys) -> Principal:
        entry = keys.api_keys.get(hashlib.sha256(key.encode()).hexdigest())
        if entry is None:
            raise AuthenticationError("unknown API key")
        tenant, role, subject = [*entry.split(":", 2), "", ""][:3]
        return _principal(tenant, role, subject or "api-key", "api_key")

    def _verify_jwt(self, token: str, keys: _Keys) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationError("malformed token") from None
        alg = header.get("alg")
        key = keys.verifiers.get(str(alg))
        if key is None:
            # Covers "none" and any algorithm we hold no key for.
            raise AuthenticationError(f"unsupported token algorithm {alg!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],  # exactly the key's algorithm
                audience=keys.audience or None,
                issuer=keys.issuer or None,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("token not yet valid (nbf)") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("token has the wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("token has the wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError:
            raise AuthenticationError("invalid token") from None
        return _principal(
            str(claims.get("tenant", "")), str(claims.get("role", "")), str(claims["sub"]), "jwt"
        )


def _principal(tenant: str, role: str, subject: str, method: str) -> Principal:
    if not re.match(TENANT_PATTERN, tenant):
        raise AuthenticationError("credential carries no valid tenant")
    if role not in ROLES:
        raise AuthenticationError(f"credential carries an unknown role {role!r}")
    return Principal(tenant=tenant, subject=subject, role=role, method=method)  # type: ignore[arg-type]
