"""Chat completions: turn an OpenAI request into inference calls through Dapr."""

from __future__ import annotations

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import GenerateRequest, GenerateResult, SamplingParams, parse
from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.openai.chat.protocol import (
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Usage,
)
from autoglm.gateway.settings import GatewaySettings


class ChatCompletionService:
    def __init__(self, sidecar: SidecarAPI, settings: GatewaySettings) -> None:
        self.sidecar = sidecar
        self.settings = settings

    def parse(self, body: bytes) -> ChatCompletionRequest:
        request = parse(ChatCompletionRequest, body)
        if request.n > self.settings.max_n:
            raise InvalidRequestError(f"n must be at most {self.settings.max_n}", param="n")
        if request.stream:
            raise InvalidRequestError(
                "stream=true is not supported yet", param="stream", code="unsupported"
            )
        return request

    def create(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        max_tokens = request.max_completion_tokens or request.max_tokens or 128
        results: list[GenerateResult] = []
        for i in range(request.n):
            sampling = SamplingParams(
                max_tokens=max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                # Distinct but reproducible seeds for the n choices.
                seed=None if request.seed is None else request.seed + i,
                stop=request.stop_list,
            )
            generate = GenerateRequest(
                model=request.model, messages=request.messages, sampling=sampling
            )
            reply = self.sidecar.invoke(
                self.settings.inference_app_id,
                "generate",
                generate.model_dump(mode="json"),
                timeout=self.settings.request_timeout_s,
            )
            results.append(parse(GenerateResult, reply))
        prompt_tokens = results[0].prompt_tokens
        completion_tokens = sum(r.completion_tokens for r in results)
        return ChatCompletionResponse(
            model=results[0].model,
            choices=[
                ChatCompletionChoice(
                    index=i,
                    message=ChatCompletionMessage(content=r.text),
                    finish_reason=r.finish_reason,
                )
                for i, r in enumerate(results)
            ],
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )
