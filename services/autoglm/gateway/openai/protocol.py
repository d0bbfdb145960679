"""Schemas shared by the OpenAI endpoints."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from autoglm.core.schemas import MAX_STOP_CHARS, MAX_STOP_SEQUENCES

StopSequence = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)]


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


class GenerationRequest(OpenAIRequest):
    """What chat and text completions share: model, sampling, ``n`` and streaming."""

    model: str = Field(min_length=1, max_length=128)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: StopSequence | StopList | None = None
    #: Choice i of ``n`` uses ``seed + i``, so the bounds leave room below torch's 64 bits.
    seed: int | None = Field(default=None, ge=-(2**62), le=2**62)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


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
