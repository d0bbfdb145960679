"""Text completions: each prompt (times ``n``) is one generation on the raw prompt."""

from __future__ import annotations

from collections.abc import Iterator

from autoglm.core.errors import AutoGLMError, InvalidRequestError
from autoglm.core.schemas import GenerateRequest, TokenLogprob, parse
from autoglm.gateway import sse
from autoglm.gateway.context import RequestContext
from autoglm.gateway.openai.completions.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from autoglm.gateway.openai.protocol import Usage
from autoglm.gateway.openai.serving import GenerationServing, Served
from autoglm.gateway.openai.streaming import TokenStream


class CompletionService(GenerationServing):
    def parse(self, body: bytes) -> CompletionRequest:
        request = parse(CompletionRequest, body)
        self.check_limits(len(request.prompts) * request.n, request.max_tokens, "prompts times n")
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
        return self.engine_request(
            tenant,
            request,
            request.max_tokens,
            logprobs=request.logprobs is not None,
            top_logprobs=request.logprobs or 0,
            prompt=prompt,
        )

    def create(self, ctx: RequestContext, request: CompletionRequest) -> Served:
        choices: list[CompletionChoice] = []
        prompt_tokens, completion_tokens, model = 0, 0, request.model
        for prompt in request.prompts:
            result = self.inference.generate(self._generate(ctx.tenant, request, prompt))
            for choice in map(self.cut, result.all_choices()):
                choices.append(
                    CompletionChoice(
                        index=len(choices),
                        text=(prompt + choice.text) if request.echo else choice.text,
                        finish_reason=choice.finish_reason,
                        logprobs=self._logprobs(request, choice.logprobs),
                    )
                )
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            model = result.model
        usage = Usage.of(prompt_tokens, completion_tokens)
        ctx.charge(usage.total_tokens)
        return Served(CompletionResponse(model=model, choices=choices, usage=usage).to_json())

    @staticmethod
    def _logprobs(
        request: CompletionRequest, entries: list[TokenLogprob] | None, offset: int = 0
    ) -> CompletionLogprobs | None:
        if request.logprobs is None:
            return None
        return CompletionLogprobs.of(entries or [], offset)

    def open_stream(self, ctx: RequestContext, request: CompletionRequest) -> Iterator[bytes]:
        # Charged when the SSE body closes the stream (``_sse``'s finally).
        stream = self.open_tokens(ctx, self._generate(ctx.tenant, request, request.prompts[0]))
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
