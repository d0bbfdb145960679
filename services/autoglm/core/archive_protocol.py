"""Bodies of the archiver's service-invocation methods: one definition for both sides.

The gateway builds requests with these models and reads replies with them; the archiver
validates with the same models. Failures come back as ``{"error": {...}}`` payloads
(``autoglm.core.errors``) and are re-raised by ``Sidecar.invoke``. A ``ConflictError``
from ``attachment_put`` carries ``details["expected_offset"]``; one from a stale snapshot
write carries ``details["current_version"]``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from pydantic import Field, field_validator

from autoglm.core.schemas import ChatMessage, Payload, SafeId, TenantId

RESTORE = "restore"
ATTACHMENT_START = "attachment_start"
ATTACHMENT_PUT = "attachment_put"
ATTACHMENT_GET = "attachment_get"
AUDIT_QUERY = "audit_query"
HEALTH = "health"

ATTACHMENT_ID = r"^att-[0-9a-f]{32}$"
#: A UTC day as the audit archive names its files.
AUDIT_DAY = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def b64decode(data: str) -> bytes:
    """Strict base64 (invalid characters are an error, not silently skipped)."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


class RestoreRequest(Payload):
    tenant: TenantId
    session_id: SafeId
    #: A chosen version (admin restore); the newest one when omitted.
    version: int | None = Field(default=None, ge=1)


class RestoreReply(Payload):
    tenant: str
    session_id: str
    version: int
    messages: list[ChatMessage]
    model: str | None = None
    #: The newest archived version; above ``version`` when an older one was chosen. An
    #: admin restore writes above it (``SessionStore.restore_version`` says why).
    latest_version: int | None = None
    #: The snapshot's ``record`` (a stored response's object), when it has one.
    record: dict[str, Any] | None = None


class AttachmentStartRequest(Payload):
    tenant: TenantId
    filename: str = Field(min_length=1, max_length=255)
    mime_type: str = Field(min_length=3, max_length=127)
    size: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class AttachmentFields(Payload):
    """What an attachment is, as both replies about it state it."""

    id: str
    filename: str
    mime_type: str
    size: int
    sha256: str
    category: str
    version: int
    complete: bool


class AttachmentInfo(AttachmentFields):
    """Reply of ``attachment_start``: the upload and where it stands."""

    #: The next byte expected (the size once complete).
    offset: int


class AttachmentPutRequest(Payload):
    tenant: TenantId
    #: Not found unless it is an ``ATTACHMENT_ID`` (a stricter rule than ``SafeId``).
    id: str = Field(min_length=1, max_length=64)
    #: Must equal the upload's checkpoint (the next byte expected).
    offset: int = Field(ge=0)
    #: The chunk, base64.
    data: str

    @field_validator("data")
    @classmethod
    def _base64(cls, value: str) -> str:
        b64decode(value)
        return value


class AttachmentPutReply(Payload):
    id: str
    #: The next offset expected (the upload's size once complete).
    offset: int
    complete: bool
    version: int
    #: Set once complete: the verified SHA-256 of the whole object.
    sha256: str | None = None


#: Most bytes one ``attachment_get`` returns. A reply is base64 in one service-invocation
#: message, and daprd refuses bodies over 4 MiB by default (``--max-body-size``), so a
#: larger object is read range by range.
MAX_READ_BYTES = 1024 * 1024


class AttachmentGetRequest(Payload):
    tenant: TenantId
    #: Not found unless it is an ``ATTACHMENT_ID`` (a stricter rule than ``SafeId``).
    id: str = Field(min_length=1, max_length=64)
    #: The range to read: ``length`` bytes from ``offset`` (fewer at the end).
    offset: int = Field(default=0, ge=0)
    length: int = Field(default=MAX_READ_BYTES, ge=1, le=MAX_READ_BYTES)


class AttachmentGetReply(AttachmentFields):
    #: Where ``data`` starts in the object.
    offset: int = 0
    #: The requested range of the object, base64 (empty until the upload is complete).
    data: str


def calendar_day(value: str) -> str:
    """``value`` if it is a real ``YYYY-MM-DD`` date (the pattern alone takes 2024-02-30)."""
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a calendar day, YYYY-MM-DD") from None
    return value


#: Most events one ``audit_query`` returns: a thousand events of well under 1 KiB each
#: stay far below daprd's 4 MiB message limit.
MAX_AUDIT_EVENTS = 1000
DEFAULT_AUDIT_EVENTS = 100


class AuditPage(Payload):
    """One page of one day's audit events: what the gateway's query and the archiver's
    ``audit_query`` share."""

    day: str = Field(pattern=AUDIT_DAY)
    #: How many of the day's events to skip (the previous page's ``next_offset``).
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=DEFAULT_AUDIT_EVENTS, ge=1, le=MAX_AUDIT_EVENTS)

    @field_validator("day")
    @classmethod
    def _calendar_day(cls, value: str) -> str:
        return calendar_day(value)


class AuditQueryRequest(AuditPage):
    tenant: TenantId


class AuditQueryReply(Payload):
    tenant: str
    day: str
    #: The archived events as written (``AuditEvent`` JSON), oldest first.
    events: list[dict[str, Any]]
    #: Where the next page starts; ``None`` once this page reached the end of the day.
    next_offset: int | None = None


class HealthReply(Payload):
    ready: bool
    #: Why not ready (e.g. the last write error); ``None`` when ready.
    reason: str | None = None
    dirty_sessions: int
