"""Query string of ``GET /v1/audit``: a page of one tenant's audit events for one day."""

from __future__ import annotations

from autoglm.core.archive_protocol import AuditPage
from autoglm.core.schemas import TenantId


class AuditQuery(AuditPage):
    #: Whose events; the caller's own tenant when omitted.
    tenant: TenantId | None = None
