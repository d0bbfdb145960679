"""OpenAI (legacy) text-completion schemas."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from autoglm.core.schemas import FinishReason
from autoglm.gateway.openai.protocol import GenerationRequest, Usage


class CompletionRequest(GenerationRequest):
    #: One prompt or a batch; token-id prompts are not supported.
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1)
    echo: bool = False

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
