"""OpenAI embeddings schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from autoglm.gateway.openai.protocol import OpenAIRequest


class EmbeddingRequest(OpenAIRequest):
    model: str = Field(min_length=1, max_length=128)
    #: Text or a batch of texts; token-id inputs are not supported.
    input: str | list[str] = Field(min_length=1)
    #: The official client asks for base64 by default and decodes it itself.
    encoding_format: Literal["float", "base64"] = "float"

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
