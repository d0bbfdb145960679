"""Embeddings through inference's ``embed`` method."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import EmbedRequest, parse
from autoglm.gateway.context import RequestContext
from autoglm.gateway.inference_client import InferenceClient
from autoglm.gateway.openai.embeddings.protocol import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from autoglm.gateway.openai.serving import Served
from autoglm.gateway.security.content_filter import ContentFilter

MAX_INPUTS = 2048


@dataclass
class EmbeddingService:
    inference: InferenceClient
    filter: ContentFilter = field(default_factory=ContentFilter)

    def parse(self, body: bytes) -> EmbeddingRequest:
        request = parse(EmbeddingRequest, body)
        if len(request.texts) > MAX_INPUTS:
            raise InvalidRequestError(f"input may hold at most {MAX_INPUTS} texts", param="input")
        self.filter.check_texts(request.texts, "input")
        return request

    def create(self, ctx: RequestContext, request: EmbeddingRequest) -> Served:
        result = self.inference.embed(EmbedRequest(model=request.model, input=request.texts))
        ctx.charge(result.prompt_tokens)
        response = EmbeddingResponse(
            model=result.model,
            data=[
                EmbeddingData(index=i, embedding=_encode(v, request.encoding_format))
                for i, v in enumerate(result.data)
            ],
            usage=EmbeddingUsage(
                prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
            ),
        )
        return Served(response.to_json())


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    # OpenAI's base64 format: little-endian float32.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
