"""Who is calling: established once per request by ``auth``, checked by ``rbac``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeGuard

Role = Literal["admin", "user", "service"]
ROLES: tuple[Role, ...] = ("admin", "user", "service")
#: Tenants become parts of state keys (``session:{tenant}:...``), so no ``:`` or ``/``.
TENANT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def is_role(value: str) -> TypeGuard[Role]:
    return value in ROLES


def is_tenant(value: str) -> bool:
    # fullmatch, not ``^...$``: ``$`` would accept a trailing newline.
    return TENANT_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Principal:
    tenant: str
    subject: str
    role: Role
    method: Literal["jwt", "api_key"]
