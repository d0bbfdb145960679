"""Issuing credentials the ``Authenticator`` accepts: dev JWTs and API keys.

Kept next to the verifier so that claim names and the API-key hash scheme are defined
once. Production tokens come from the organisation's identity provider; these are for
development and for tooling (``autoglm token``).
"""

from __future__ import annotations

import hashlib
import secrets
import time

import jwt

from autoglm.gateway.security.principal import Role, is_tenant

#: Prefix of API keys we issue, so that leaked keys are recognisable (and masked).
API_KEY_PREFIX = "agk_"


def mint_token(
    jwt_secret: dict[str, str],
    *,
    tenant: str,
    role: Role,
    subject: str | None = None,
    ttl_s: int = 3600,
    now: float | None = None,
) -> str:
    """An HS256 JWT for ``tenant``/``role`` signed with the ``jwt`` secret's key."""
    if not is_tenant(tenant):
        raise ValueError(f"invalid tenant {tenant!r}")
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": subject or f"{role}@{tenant}",
        "tenant": tenant,
        "role": role,
        "iss": jwt_secret["issuer"],
        "aud": jwt_secret["audience"],
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
    }
    return jwt.encode(claims, jwt_secret["hs256-key"], algorithm="HS256")


def api_key_hash(key: str) -> str:
    """What the ``api-keys`` secret stores for ``key`` (never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key(*, tenant: str, role: Role, subject: str) -> tuple[str, str, str]:
    """A fresh key, its hash and the ``tenant:role:subject`` entry to store under it."""
    if not is_tenant(tenant):
        raise ValueError(f"invalid tenant {tenant!r}")
    if ":" in subject:
        raise ValueError("subject must not contain ':'")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, api_key_hash(key), f"{tenant}:{role}:{subject}"
