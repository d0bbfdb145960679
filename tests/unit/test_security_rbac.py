"""RBAC: the role x action matrix and tenant isolation."""

from __future__ import annotations

import pytest

from autoglm.core.errors import PermissionDeniedError
from autoglm.gateway.security.principal import Principal, Role
from autoglm.gateway.security.rbac import Action, authorize, can_access

TENANT_WORK = {
    Action.INFERENCE,
    Action.MODELS_READ,
    Action.SESSIONS,
    Action.JOBS,
    Action.ATTACHMENTS,
}
ALLOWED: dict[Role, set[Action]] = {
    "admin": set(Action),
    "user": TENANT_WORK,
    "service": TENANT_WORK,
}


def who(role: Role, tenant: str = "acme") -> Principal:
    return Principal(tenant=tenant, subject=f"{role}@{tenant}", role=role, method="jwt")


@pytest.mark.parametrize("role", ["admin", "user", "service"])
@pytest.mark.parametrize("action", list(Action))
def test_role_action_matrix(role: Role, action: Action) -> None:
    if action in ALLOWED[role]:
        authorize(who(role), action)
    else:
        with pytest.raises(PermissionDeniedError) as info:
            authorize(who(role), action)
        assert info.value.status == 403
        assert action.value in info.value.message


@pytest.mark.parametrize("role", ["user", "service"])
@pytest.mark.parametrize("action", [Action.SESSIONS, Action.JOBS, Action.ATTACHMENTS])
def test_tenants_never_reach_each_other(role: Role, action: Action) -> None:
    authorize(who(role), action, owner_tenant="acme")
    assert can_access(who(role), "acme")
    assert not can_access(who(role), "globex")
    with pytest.raises(PermissionDeniedError):
        authorize(who(role), action, owner_tenant="globex")


def test_admin_crosses_tenants() -> None:
    for action in Action:
        authorize(who("admin"), action, owner_tenant="globex")
    assert can_access(who("admin"), "globex")


def test_tenant_names_compare_exactly() -> None:
    assert not can_access(who("user", "acme"), "ACME")
    assert not can_access(who("user", "acme"), "acme ")
