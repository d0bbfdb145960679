"""Test credentials, minted the way ``autoglm token`` does."""

from __future__ import annotations

from autoglm.gateway.security.principal import Role
from autoglm.gateway.security.tokens import mint_token

JWT_SECRET = {
    "hs256-key": "unit-test-signing-key-0123456789abcdef0123456789",
    "issuer": "autoglm-dev",
    "audience": "autoglm",
}


def bearer(tenant: str, role: Role = "user", secret: dict[str, str] = JWT_SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(secret, tenant=tenant, role=role)}"}
