"""Session request and record schemas."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autoglm.core.schemas import ChatMessage, SafeId, TenantId, new_id


class CreateSessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Optional client-chosen id; a server id is generated otherwise.
    id: SafeId | None = None
    model: str | None = Field(default=None, min_length=1, max_length=128)
    #: Initial history, typically a system message.
    messages: list[ChatMessage] = Field(default_factory=list, max_length=1000)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)


class RestoreSessionRequest(BaseModel):
    """Body of ``POST /v1/sessions/{id}/restore`` (admin)."""

    model_config = ConfigDict(extra="forbid")

    #: The archived version whose history becomes the session's current one.
    version: int = Field(ge=1)
    #: The session's tenant; the admin's own when omitted.
    tenant: TenantId | None = None


class SessionRecord(BaseModel):
    """What is stored under ``session:{tenant}:{id}`` and returned to the client."""

    id: str = Field(default_factory=lambda: new_id("sess"))
    object: Literal["session"] = "session"
    tenant: str
    created: int = Field(default_factory=lambda: int(time.time()))
    updated: int = Field(default_factory=lambda: int(time.time()))
    #: Incremented on every change; the archiver keys snapshots by it.
    version: int = 1
    model: str | None = None
    messages: list[ChatMessage] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
