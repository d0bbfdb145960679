"""What the OpenAI generation endpoints share below their routes.

``GenerationServing`` is the base of chat and text completions: the limits on the number
of choices and on ``max_tokens``, the engine request built from the OpenAI one, the
output content filter, and token streams charged to the caller when they close.
``Served`` is a JSON reply with its headers, as every endpoint's ``create`` returns it;
the tokens it served have been charged to the caller by then (``RequestContext.charge``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import GenerateChoice, GenerateRequest
from autoglm.gateway.context import RequestContext
from autoglm.gateway.inference_client import InferenceClient
from autoglm.gateway.openai.protocol import GenerationRequest
from autoglm.gateway.openai.streaming import TokenStream
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.settings import GatewaySettings


@dataclass
class Served:
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class GenerationServing:
    inference: InferenceClient
    filter: ContentFilter
    settings: GatewaySettings

    def check_limits(self, choices: int, max_tokens: int, choices_are: str = "n") -> None:
        """At most ``max_n`` choices (``choices_are`` names them in the message) and at
        most ``max_tokens_limit`` tokens each."""
        if choices > self.settings.max_n:
            raise InvalidRequestError(
                f"{choices_are} must be at most {self.settings.max_n}", param="n"
            )
        if max_tokens > self.settings.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens must be at most {self.settings.max_tokens_limit}", param="max_tokens"
            )

    def engine_request(
        self,
        tenant: str,
        request: GenerationRequest,
        max_tokens: int,
        *,
        logprobs: bool,
        top_logprobs: int,
        **inputs: Any,
    ) -> GenerateRequest:
        """One generation group of ``n`` choices (the prompt is prefilled once) for
        ``inputs`` (``messages`` and tools, or ``prompt``)."""
        return GenerateRequest(
            model=request.model,
            sampling=request.sampling(max_tokens, logprobs=logprobs, top_logprobs=top_logprobs),
            timeout_s=self.settings.request_timeout_s,
            n=request.n,
            response_format=request.response_format,
            structured_outputs=request.structured_outputs,
            tenant=tenant,  # the engine schedules tenants fairly
            **inputs,
        )

    def cut(self, choice: GenerateChoice) -> GenerateChoice:
        """``choice`` cut at the content filter's first blocked term."""
        at = self.filter.first_violation(choice.text)
        if at is None:
            return choice
        return choice.model_copy(
            update={"text": choice.text[:at], "finish_reason": "content_filter"}
        )

    def open_tokens(self, ctx: RequestContext, generate: GenerateRequest) -> TokenStream:
        """Start a streamed generation; its tokens are charged to the caller when the
        stream is closed (finished, failed, cut or abandoned)."""
        return TokenStream.open(self.inference, generate, self.filter, ctx.meter())
