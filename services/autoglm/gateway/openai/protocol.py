"""Schemas shared by the OpenAI endpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from autoglm.core.schemas import (
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    ResponseFormat,
    SamplingParams,
    StructuredOutputs,
)

StopSequence = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)]


class OpenAIRequest(BaseModel):
    """Base of request bodies. Unknown fields — including OpenAI fields not implemented
    here, which would change the answer if ignored — are refused with their name. Fields
    that only label or route a request are accepted: ``user``, ``metadata``,
    ``service_tier``, and ``store`` when false (nothing is stored for a client)."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    service_tier: str | None = Field(default=None, max_length=32)
    store: Literal[False] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class GenerationRequest(OpenAIRequest):
    """What chat and text completions share: model, sampling, penalties, constraints,
    ``n`` and streaming."""

    model: str = Field(min_length=1, max_length=128)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    #: OpenAI's form: token id (as a string key) -> bias in [-100, 100].
    logit_bias: dict[str, float] | None = Field(default=None, max_length=1024)
    #: Extensions (as vLLM's): repetition penalty, minimum length, more end tokens,
    #: generation past the end token (benchmarks).
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = Field(default=None, max_length=64)
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    #: Extension: regex / choice / JSON schema / Lark grammar (exactly one).
    structured_outputs: StructuredOutputs | None = None
    stop: StopSequence | StopList | None = None
    #: Choice i of ``n`` uses ``seed + i``, so the bounds leave room below torch's 64 bits.
    seed: int | None = Field(default=None, ge=-(2**62), le=2**62)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids; {key!r} is not one")
        return bias

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self, max_tokens: int, i: int = 0, **extra: Any) -> SamplingParams:
        """The engine's sampling settings for this request (choice ``i`` of separate
        generations gets ``seed + i``)."""
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=None if self.seed is None else self.seed + i,
            stop=self.stop_list,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            min_tokens=self.min_tokens,
            stop_token_ids=self.stop_token_ids or [],
            ignore_eos=self.ignore_eos,
            **extra,
        )


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
