"""Async job records: a chat completion run through ``inference.requests``."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from autoglm.core.schemas import new_id

JobStatus = Literal["queued", "completed", "failed"]


class JobRecord(BaseModel):
    """Stored under ``job:{tenant}:{id}`` and returned by ``GET /v1/jobs/{id}``."""

    id: str = Field(default_factory=lambda: new_id("job"))
    object: Literal["job"] = "job"
    tenant: str
    status: JobStatus = "queued"
    created: int = Field(default_factory=lambda: int(time.time()))
    completed: int | None = None
    model: str
    #: A chat.completion object once completed.
    result: dict[str, Any] | None = None
    #: OpenAI-shaped error object once failed.
    error: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"tenant"})
