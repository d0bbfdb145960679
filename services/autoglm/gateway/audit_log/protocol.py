"""Query string of ``GET /v1/audit``: a page of one tenant's audit events for one day."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autoglm.core.archive_protocol import (
    AUDIT_DAY,
    DEFAULT_AUDIT_EVENTS,
    MAX_AUDIT_EVENTS,
    calendar_day,
)
from autoglm.core.schemas import SAFE_ID


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Whose events; the caller's own tenant when omitted.
    tenant: str | None = Field(default=None, min_length=1, max_length=64, pattern=SAFE_ID)
    #: The UTC day, ``YYYY-MM-DD``.
    day: str = Field(pattern=AUDIT_DAY)
    #: Events to skip: the previous page's ``next_offset``.
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=DEFAULT_AUDIT_EVENTS, ge=1, le=MAX_AUDIT_EVENTS)

    @field_validator("day")
    @classmethod
    def _calendar_day(cls, value: str) -> str:
        return calendar_day(value)
