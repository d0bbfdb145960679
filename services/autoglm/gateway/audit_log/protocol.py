"""Query string of ``GET /v1/audit``: a page of one tenant's audit events for one day."""

from __future__ import annotations

from pydantic import Field

from autoglm.core.archive_protocol import AuditPage
from autoglm.core.schemas import SAFE_ID


class AuditQuery(AuditPage):
    #: Whose events; the caller's own tenant when omitted.
    tenant: str | None = Field(default=None, min_length=1, max_length=64, pattern=SAFE_ID)
