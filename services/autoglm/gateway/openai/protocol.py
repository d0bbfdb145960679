"""Schemas shared by the OpenAI endpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OpenAIRequest(BaseModel):
    """Base of request bodies. Unknown fields are refused with their name rather than
    silently ignored. Penalties are accepted for client compatibility but must be 0:
    a non-zero value is refused rather than silently not applied."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)

    @model_validator(mode="after")
    def _no_penalties(self) -> OpenAIRequest:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported; send 0 or leave it out")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @staticmethod
    def of(prompt_tokens: int, completion_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
