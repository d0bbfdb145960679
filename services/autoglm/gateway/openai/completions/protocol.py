"""OpenAI (legacy) text-completion schemas."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from autoglm.core.schemas import FinishReason, TokenLogprob, new_id
from autoglm.gateway.openai.protocol import GenerationRequest, Usage


class CompletionRequest(GenerationRequest):
    #: One prompt or a batch; token-id prompts are not supported.
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1)
    echo: bool = False
    #: Log-probabilities of the generated tokens, with this many alternatives each.
    logprobs: int | None = Field(default=None, ge=0, le=20)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class CompletionLogprobs(BaseModel):
    """The legacy completions form of log-probabilities."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)

    @staticmethod
    def of(entries: list[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
        out = CompletionLogprobs()
        for entry in entries:
            out.tokens.append(entry.token)
            out.token_logprobs.append(entry.logprob)
            out.top_logprobs.append({t.token: t.logprob for t in entry.top_logprobs})
            out.text_offset.append(offset)
            offset += len(entry.token)
        return out


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
