"""Chat completions: OpenAI requests in, inference calls through Dapr out.

Sessions (``session_id``) prepend the stored history and append the turn once the
reply is complete; the content filter checks input before anything is generated and
cuts output at the first blocked term; deterministic requests may be answered from
the response cache.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from autoglm.core.errors import AutoGLMError, InvalidRequestError
from autoglm.core.schemas import (
    ChatMessage,
    FinishReason,
    GenerateRequest,
    SamplingParams,
    parse,
)
from autoglm.gateway import sse
from autoglm.gateway.guards import token_meter
from autoglm.gateway.inference_client import InferenceClient
from autoglm.gateway.openai.chat.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceDelta,
    ChunkChoice,
    completion_id,
)
from autoglm.gateway.openai.protocol import Usage
from autoglm.gateway.openai.streaming import TokenStream
from autoglm.gateway.response_cache import ResponseCache
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.sessions.protocol import SessionRecord
from autoglm.gateway.sessions.store import SessionStore
from autoglm.gateway.settings import GatewaySettings

CACHE_HEADER = "x-autoglm-cache"


@dataclass
class ChatOutcome:
    body: dict[str, object]
    cached: bool


class ChatCompletionService:
    def __init__(
        self,
        inference: InferenceClient,
        sessions: SessionStore,
        content_filter: ContentFilter,
        cache: ResponseCache | None,
        settings: GatewaySettings,
    ) -> None:
        self.inference = inference
        self.sessions = sessions
        self.filter = content_filter
        self.cache = cache
        self.settings = settings

    def parse(self, body: bytes) -> ChatCompletionRequest:
        request = parse(ChatCompletionRequest, body)
        if request.n > self.settings.max_n:
            raise InvalidRequestError(f"n must be at most {self.settings.max_n}", param="n")
        if request.n > 1 and (request.stream or request.session_id):
            raise InvalidRequestError(
                "n > 1 cannot be combined with stream or session_id", param="n"
            )
        max_tokens = self._max_tokens(request)
        if max_tokens > self.settings.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens must be at most {self.settings.max_tokens_limit}", param="max_tokens"
            )
        for message in request.messages:
            self.filter.check_input(message.content)
        return request

    # -- non-streaming -----------------------------------------------------------------
    def create(self, tenant: str, request: ChatCompletionRequest) -> ChatOutcome:
        session, etag = self._session(tenant, request)
        cache_key = self._cache_key(tenant, request) if session is None else None
        if cache_key and self.cache is not None:
            hit = self.cache.get(cache_key)
            if hit is not None:
                return ChatOutcome(hit, cached=True)
        prompt = self._prompt(session, request)
        results = [
            self.filter.filter_result(
                self.inference.generate(self.generate_request(request, prompt, i))
            )
            for i in range(request.n)
        ]
        if session is not None:
            reply = ChatMessage(role="assistant", content=results[0].text)
            self.sessions.append(session, etag, [*request.messages, reply])
        response = ChatCompletionResponse(
            model=results[0].model,
            choices=[
                ChatCompletionChoice(
                    index=i,
                    message=ChatCompletionMessage(content=r.text),
                    finish_reason=r.finish_reason,
                )
                for i, r in enumerate(results)
            ],
            usage=Usage.of(results[0].prompt_tokens, sum(r.completion_tokens for r in results)),
        ).to_json()
        if cache_key and self.cache is not None:
            self.cache.put(cache_key, response)
        return ChatOutcome(response, cached=False)

    # -- streaming ---------------------------------------------------------------------
    def open_stream(self, tenant: str, request: ChatCompletionRequest) -> Iterator[bytes]:
        """Read the session and start the generation (either may fail with a proper HTTP
        status), then return the SSE body."""
        session, etag = self._session(tenant, request)
        generate = self.generate_request(request, self._prompt(session, request), 0)
        # Charged when the SSE body closes the stream (``_sse``'s finally).
        stream = TokenStream.open(self.inference, generate, self.filter, token_meter())
        return self._sse(request, session, etag, stream)

    def _sse(
        self,
        request: ChatCompletionRequest,
        session: SessionRecord | None,
        etag: str | None,
        stream: TokenStream,
    ) -> Iterator[bytes]:
        head = ChatCompletionChunk(
            id=completion_id(), created=int(time.time()), model=request.model, choices=[]
        )

        def chunk(delta: ChoiceDelta, finish: FinishReason | None = None) -> bytes:
            choice = ChunkChoice(delta=delta, finish_reason=finish)
            return sse.event(head.model_copy(update={"choices": [choice]}).model_dump(mode="json"))

        completed = False
        try:
            yield chunk(ChoiceDelta(role="assistant", content=""))
            for delta in stream:
                yield chunk(ChoiceDelta(content=delta))
            yield chunk(ChoiceDelta(), stream.finish_reason)
            if request.stream_options and request.stream_options.include_usage:
                usage = head.model_copy(update={"usage": Usage.of(*stream.usage)})
                yield sse.event(usage.model_dump(mode="json"))
            if session is not None:
                reply = ChatMessage(role="assistant", content=stream.text)
                self.sessions.append(session, etag, [*request.messages, reply])
            completed = True
            yield sse.DONE
        except AutoGLMError as exc:
            yield sse.error_event(exc)
        finally:
            # A client that went away cancels its generation upstream; either way the
            # tokens generated so far are charged here.
            stream.close()
            if not completed and session is not None and stream.text:
                # Client disconnected mid-stream: keep the part it saw and ask the
                # archiver to write the session now.
                reply = ChatMessage(role="assistant", content=stream.text)
                # AutoGLMError: a concurrent turn won; nothing was acknowledged here.
                with contextlib.suppress(AutoGLMError):
                    self.sessions.append(session, etag, [*request.messages, reply], flush=True)

    # -- helpers -----------------------------------------------------------------------
    def _session(
        self, tenant: str, request: ChatCompletionRequest
    ) -> tuple[SessionRecord | None, str | None]:
        if request.session_id is None:
            return None, None
        return self.sessions.get(tenant, request.session_id)

    @staticmethod
    def _prompt(session: SessionRecord | None, request: ChatCompletionRequest) -> list[ChatMessage]:
        history = session.messages if session is not None else []
        return [*history, *request.messages]

    def _max_tokens(self, request: ChatCompletionRequest) -> int:
        return (
            request.max_completion_tokens or request.max_tokens or self.settings.default_max_tokens
        )

    def generate_request(
        self, request: ChatCompletionRequest, prompt: list[ChatMessage], i: int
    ) -> GenerateRequest:
        sampling = SamplingParams(
            max_tokens=self._max_tokens(request),
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            # Distinct but reproducible seeds for the n choices.
            seed=None if request.seed is None else request.seed + i,
            stop=request.stop_list,
        )
        return GenerateRequest(
            model=request.model,
            messages=prompt,
            sampling=sampling,
            timeout_s=self.settings.request_timeout_s,
        )

    def _cache_key(self, tenant: str, request: ChatCompletionRequest) -> str | None:
        if request.temperature != 0 or request.stream:
            return None
        return ResponseCache.key(tenant, request.model_dump(mode="json"))
