"""Text completions: each prompt (times ``n``) is one generation on the raw prompt."""

from __future__ import annotations

from collections.abc import Iterator

from autoglm.core.errors import AutoGLMError, InvalidRequestError
from autoglm.core.schemas import GenerateRequest, TokenLogprob, parse
from autoglm.gateway import sse
from autoglm.gateway.guards import token_meter
from autoglm.gateway.inference_client import InferenceClient
from autoglm.gateway.openai.completions.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from autoglm.gateway.openai.protocol import Usage
from autoglm.gateway.openai.streaming import TokenStream
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.settings import GatewaySettings


class CompletionService:
    def __init__(
        self, inference: InferenceClient, content_filter: ContentFilter, settings: GatewaySettings
    ) -> None:
        self.inference = inference
        self.filter = content_filter
        self.settings = settings

    def parse(self, body: bytes) -> CompletionRequest:
        request = parse(CompletionRequest, body)
        if len(request.prompts) * request.n > self.settings.max_n:
            raise InvalidRequestError(
                f"prompts times n must be at most {self.settings.max_n}", param="n"
            )
        if request.max_tokens > self.settings.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens must be at most {self.settings.max_tokens_limit}", param="max_tokens"
            )
        if request.stream and len(request.prompts) * request.n > 1:
            raise InvalidRequestError("stream supports one prompt with n=1", param="stream")
        if request.echo and request.logprobs is not None:
            raise InvalidRequestError(
                "logprobs of the prompt (echo with logprobs) are not supported", param="echo"
            )
        for prompt in request.prompts:
            self.filter.check_input(prompt)
        return request

    def _generate(self, tenant: str, request: CompletionRequest, prompt: str) -> GenerateRequest:
        logprobs = request.logprobs is not None
        return GenerateRequest(
            model=request.model,
            prompt=prompt,
            sampling=request.sampling(
                request.max_tokens, logprobs=logprobs, top_logprobs=request.logprobs or 0
            ),
            timeout_s=self.settings.request_timeout_s,
            n=request.n,
            response_format=request.response_format,
            structured_outputs=request.structured_outputs,
            tenant=tenant,  # the engine schedules tenants fairly
        )

    def create(self, tenant: str, request: CompletionRequest) -> CompletionResponse:
        choices: list[CompletionChoice] = []
        prompt_tokens, completion_tokens, model = 0, 0, request.model
        for prompt in request.prompts:
            result = self.inference.generate(self._generate(tenant, request, prompt))
            for choice in result.all_choices():
                text, finish = choice.text, choice.finish_reason
                cut = self.filter.first_violation(text)
                if cut is not None:
                    text, finish = text[:cut], "content_filter"
                choices.append(
                    CompletionChoice(
                        index=len(choices),
                        text=(prompt + text) if request.echo else text,
                        finish_reason=finish,
                        logprobs=self._logprobs(request, choice.logprobs),
                    )
                )
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            model = result.model
        return CompletionResponse(
            model=model, choices=choices, usage=Usage.of(prompt_tokens, completion_tokens)
        )

    @staticmethod
    def _logprobs(
        request: CompletionRequest, entries: list[TokenLogprob] | None, offset: int = 0
    ) -> CompletionLogprobs | None:
        if request.logprobs is None:
            return None
        return CompletionLogprobs.of(entries or [], offset)

    def open_stream(self, tenant: str, request: CompletionRequest) -> Iterator[bytes]:
        # Charged when the SSE body closes the stream (``_sse``'s finally).
        stream = TokenStream.open(
            self.inference,
            self._generate(tenant, request, request.prompts[0]),
            self.filter,
            token_meter(),
        )
        return self._sse(request, stream)

    def _sse(self, request: CompletionRequest, stream: TokenStream) -> Iterator[bytes]:
        head = CompletionResponse(model=request.model, choices=[])

        offset = 0

        def chunk(
            text: str, finish: str | None, logprobs: list[dict[str, object]] | None = None
        ) -> bytes:
            nonlocal offset
            entries = [TokenLogprob.model_validate(lp) for lp in logprobs or []]
            choice = CompletionChoice(
                index=0,
                text=text,
                finish_reason=finish,  # type: ignore[arg-type]
                logprobs=self._logprobs(request, entries, offset) if logprobs is not None else None,
            )
            offset += sum(len(e.token) for e in entries)
            body = head.model_copy(update={"choices": [choice]})
            return sse.event(body.model_dump(mode="json"))

        try:
            if request.echo:
                yield chunk(request.prompts[0], None)
            for piece in stream.pieces():
                yield chunk(piece.text, None, piece.logprobs)
            yield chunk("", stream.finish_reason)
            if request.stream_options and request.stream_options.include_usage:
                usage = head.model_copy(update={"choices": [], "usage": Usage.of(*stream.usage)})
                yield sse.event(usage.model_dump(mode="json"))
            yield sse.DONE
        except AutoGLMError as exc:
            yield sse.error_event(exc)
        finally:
            stream.close()  # cancels the generation upstream and charges its tokens
