"""Who is calling: established once per request by ``auth``, checked by ``rbac``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "user", "service"]
ROLES: tuple[Role, ...] = ("admin", "user", "service")
TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


@dataclass(frozen=True)
class Principal:
    tenant: str
    subject: str
    role: Role
    method: Literal["jwt", "api_key"]
