"""Minting test JWTs the way ``autoglm token`` does, from a ``jwt`` secret's values."""

from __future__ import annotations

import time

import jwt

JWT_SECRET = {
    "hs256-key": "unit-test-signing-key-0123456789abcdef0123456789",
    "issuer": "autoglm-dev",
    "audience": "autoglm",
}


def mint(
    tenant: str, role: str = "user", secret: dict[str, str] = JWT_SECRET, ttl_s: int = 600
) -> str:
    now = int(time.time())
    claims = {
        "sub": f"{role}@{tenant}",
        "tenant": tenant,
        "role": role,
        "iss": secret["issuer"],
        "aud": secret["audience"],
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret["hs256-key"], algorithm="HS256")


def bearer(tenant: str, role: str = "user", secret: dict[str, str] = JWT_SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(tenant, role, secret)}"}
