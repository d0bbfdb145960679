"""Who is calling: established once per request by ``auth``, checked by ``rbac``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeGuard

from autoglm.core.schemas import TENANT_MAX_LENGTH, is_safe_id

Role = Literal["admin", "user", "service"]
ROLES: tuple[Role, ...] = ("admin", "user", "service")


def is_role(value: str) -> TypeGuard[Role]:
    return value in ROLES


def is_tenant(value: str) -> bool:
    """Tenants become parts of state keys (``session:{tenant}:...``) and archive folders."""
    return is_safe_id(value, max_length=TENANT_MAX_LENGTH)


@dataclass(frozen=True)
class Principal:
    tenant: str
    subject: str
    role: Role
    method: Literal["jwt", "api_key"]
