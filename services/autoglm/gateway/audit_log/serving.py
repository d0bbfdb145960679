"""Reads of the archiver's audit archive (``audit_query``), for ``GET /v1/audit``."""

from __future__ import annotations

from dataclasses import dataclass

from autoglm.core.archive_protocol import AuditQueryReply, AuditQueryRequest
from autoglm.core.contracts import AUDIT_QUERY, MeshClient
from autoglm.gateway.audit_log.protocol import AuditQuery
from autoglm.gateway.security.principal import Principal
from autoglm.gateway.security.rbac import Action, authorize


@dataclass
class AuditLogService:
    mesh: MeshClient

    def read(self, principal: Principal, query: AuditQuery) -> AuditQueryReply:
        """One page of a tenant's day (the caller's own tenant when the query names
        none); only callers allowed that tenant's ``audit.read``."""
        tenant = query.tenant or principal.tenant
        authorize(principal, Action.AUDIT_READ, owner_tenant=tenant)
        request = AuditQueryRequest(**query.model_dump(exclude={"tenant"}), tenant=tenant)
        return self.mesh.call(AUDIT_QUERY, request)
