"""Role-based access: which role may do what, and tenant ownership.

``user`` runs inference and works on its own tenant's sessions, jobs and attachments;
``service`` (another Dapr app) may do the same for the tenant named in its credential
and nothing more; ``admin`` may do everything, including model load/unload, restoring a
chosen session version and reading any tenant's audit trail. Only ``admin`` crosses
tenants.
"""

from __future__ import annotations

import enum

from autoglm.core.errors import PermissionDeniedError
from autoglm.gateway.security.principal import Principal, Role


class Action(enum.StrEnum):
    INFERENCE = "inference"
    MODELS_READ = "models.read"
    MODELS_ADMIN = "models.admin"
    SESSIONS = "sessions"
    #: Restore a chosen archived version over a session's current history.
    SESSIONS_ADMIN = "sessions.admin"
    JOBS = "jobs"
    ATTACHMENTS = "attachments"
    AUDIT_READ = "audit.read"


_TENANT_WORK = frozenset(
    {Action.INFERENCE, Action.MODELS_READ, Action.SESSIONS, Action.JOBS, Action.ATTACHMENTS}
)
PERMISSIONS: dict[Role, frozenset[Action]] = {
    "admin": frozenset(Action),
    "user": _TENANT_WORK,
    "service": _TENANT_WORK,
}


def can_access(principal: Principal, owner_tenant: str) -> bool:
    """Whether ``principal`` may see a resource of ``owner_tenant`` at all (routes answer
    404 when not, so that other tenants' resources cannot even be probed)."""
    return principal.role == "admin" or principal.tenant == owner_tenant


def authorize(principal: Principal, action: Action, *, owner_tenant: str | None = None) -> None:
    """Raise ``PermissionDeniedError`` unless ``principal`` may do ``action`` (on a
    resource of ``owner_tenant``, when given)."""
    if action not in PERMISSIONS[principal.role]:
        raise PermissionDeniedError(f"role {principal.role!r} may not perform {action.value!r}")
    if owner_tenant is not None and not can_access(principal, owner_tenant):
        raise PermissionDeniedError(f"tenant {principal.tenant!r} may not access this resource")
