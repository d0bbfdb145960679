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
from typing import Any

from autoglm.core.errors import AutoGLMError, InvalidRequestError
from autoglm.core.schemas import (
    ChatMessage,
    FinishReason,
    GenerateChoice,
    GenerateRequest,
    GenerateResult,
    TokenLogprob,
    parse,
)
from autoglm.gateway import sse
from autoglm.gateway.context import RequestContext
from autoglm.gateway.openai.chat.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceDelta,
    ChoiceLogprobs,
    ChunkChoice,
    completion_id,
)
from autoglm.gateway.openai.protocol import Usage
from autoglm.gateway.openai.serving import GenerationServing, Served
from autoglm.gateway.openai.streaming import TokenStream
from autoglm.gateway.response_cache import ResponseCache
from autoglm.gateway.sessions.store import SessionStore, SessionTurn, StaleSessionError

CACHE_HEADER = "x-autoglm-cache"


@dataclass
class ChatCompletionService(GenerationServing):
    sessions: SessionStore
    cache: ResponseCache | None = None

    def parse(self, body: bytes) -> ChatCompletionRequest:
        return self.validate(parse(ChatCompletionRequest, body))

    def validate(self, request: ChatCompletionRequest) -> ChatCompletionRequest:
        """The limits and the input content filter (every chat-shaped endpoint's)."""
        self.check_limits(request.n, self._max_tokens(request))
        if request.n > 1 and (request.stream or request.session_id):
            raise InvalidRequestError(
                "n > 1 cannot be combined with stream or session_id", param="n"
            )
        for message in request.messages:
            self.filter.check_input(message.content)
        return request

    # -- the serving core: shared by chat and the Responses API -------------------------
    def complete(
        self, ctx: RequestContext, request: ChatCompletionRequest, prompt: list[ChatMessage]
    ) -> tuple[GenerateResult, list[GenerateChoice]]:
        """Generate for ``prompt``; the choices cut by the output content filter. The
        caller charges the result's tokens once its reply is certain. A session's turn
        goes to the inference replica holding the session (session affinity)."""
        generate = self.generate_request(request, prompt, ctx.tenant)
        result = self.inference.generate(generate, session=request.session_id)
        return result, [self.cut(c) for c in result.all_choices()]

    def open_chat_tokens(
        self, ctx: RequestContext, request: ChatCompletionRequest, prompt: list[ChatMessage]
    ) -> TokenStream:
        """Start a streamed generation for ``prompt``; its tokens are charged to the
        caller when it is closed."""
        return self.open_tokens(ctx, self.generate_request(request, prompt, ctx.tenant))

    # -- non-streaming -----------------------------------------------------------------
    def create(self, ctx: RequestContext, request: ChatCompletionRequest) -> Served:
        turn = self._session(ctx.tenant, request, cached=True)
        try:
            try:
                return self._create(ctx, request, turn)
            except StaleSessionError:
                # Opened from the cache, and another process had changed the session
                # before: nothing was written or answered; read it and do the turn again.
                assert turn is not None
                turn.reread()
                self._check_history(turn)
                return self._create(ctx, request, turn)
        finally:
            if turn is not None:
                turn.close()

    def _create(
        self, ctx: RequestContext, request: ChatCompletionRequest, turn: SessionTurn | None
    ) -> Served:
        cache_key = self._cache_key(ctx.tenant, request) if turn is None else None
        if cache_key and self.cache is not None:
            hit = self.cache.get(cache_key)
            if hit is not None:
                return self._served(ctx, hit, cached=True)
        result, choices = self.complete(ctx, request, self._prompt(turn, request))
        if turn is not None:
            first = choices[0]
            reply = ChatMessage(role="assistant", content=first.text, tool_calls=first.tool_calls)
            turn.append([*request.messages, reply])
        response = ChatCompletionResponse(
            model=result.model,
            choices=[
                ChatCompletionChoice(
                    index=i,
                    message=ChatCompletionMessage(
                        content=None if c.tool_calls and not c.text else c.text,
                        tool_calls=c.tool_calls,
                    ),
                    finish_reason=c.finish_reason,
                    logprobs=ChoiceLogprobs(content=c.logprobs) if request.logprobs else None,
                )
                for i, c in enumerate(choices)
            ],
            usage=Usage.of(result.prompt_tokens, result.completion_tokens),
        ).to_json()
        if cache_key and self.cache is not None:
            self.cache.put(cache_key, response)
        return self._served(ctx, response, cached=False)

    def _served(self, ctx: RequestContext, body: dict[str, Any], *, cached: bool) -> Served:
        """The reply, its tokens charged (a cached reply's too: the client got them)."""
        usage = body.get("usage") or {}
        ctx.charge(int(usage.get("total_tokens") or 0))
        headers = {CACHE_HEADER: "hit" if cached else "miss"} if self.cache is not None else {}
        return Served(body, headers)

    # -- streaming ---------------------------------------------------------------------
    def open_stream(self, ctx: RequestContext, request: ChatCompletionRequest) -> Iterator[bytes]:
        """Read the session and start the generation (either may fail with a proper HTTP
        status), then return the SSE body."""
        turn = self._session(ctx.tenant, request)
        try:
            # Charged when the SSE body closes the stream (``_sse``'s finally).
            stream = self.open_chat_tokens(ctx, request, self._prompt(turn, request))
        except BaseException:
            if turn is not None:
                turn.close()
            raise
        return self._sse(request, turn, stream)

    def _sse(
        self, request: ChatCompletionRequest, turn: SessionTurn | None, stream: TokenStream
    ) -> Iterator[bytes]:
        head = ChatCompletionChunk(
            id=completion_id(), created=int(time.time()), model=request.model, choices=[]
        )

        def chunk(
            delta: ChoiceDelta,
            finish: FinishReason | None = None,
            logprobs: list[dict[str, object]] | None = None,
        ) -> bytes:
            lps = (
                ChoiceLogprobs(content=[TokenLogprob.model_validate(lp) for lp in logprobs])
                if request.logprobs and logprobs is not None
                else None
            )
            choice = ChunkChoice(delta=delta, finish_reason=finish, logprobs=lps)
            return sse.event(head.model_copy(update={"choices": [choice]}).model_dump(mode="json"))

        completed = False
        try:
            yield chunk(ChoiceDelta(role="assistant", content=""))
            for piece in stream.pieces():
                if piece.tool_calls:
                    yield chunk(ChoiceDelta(tool_calls=piece.tool_calls))
                else:
                    yield chunk(ChoiceDelta(content=piece.text), logprobs=piece.logprobs)
            yield chunk(ChoiceDelta(), stream.finish_reason)
            if request.stream_options and request.stream_options.include_usage:
                usage = head.model_copy(update={"usage": Usage.of(*stream.usage)})
                yield sse.event(usage.model_dump(mode="json"))
            if turn is not None:
                calls = stream.result.tool_calls if stream.result else None
                reply = ChatMessage(
                    role="assistant", content="" if calls else stream.text, tool_calls=calls
                )
                turn.append([*request.messages, reply])
            completed = True
            yield sse.DONE
        except AutoGLMError as exc:
            yield sse.error_event(exc)
        finally:
            # A client that went away cancels its generation upstream; either way the
            # tokens generated so far are charged here.
            stream.close()
            if turn is not None:
                try:
                    if not completed and stream.text:
                        # Client disconnected mid-stream: keep the part it saw and ask the
                        # archiver to write the session now.
                        reply = ChatMessage(role="assistant", content=stream.text)
                        # AutoGLMError: a concurrent turn won; nothing was acknowledged.
                        with contextlib.suppress(AutoGLMError):
                            turn.append([*request.messages, reply], flush=True)
                finally:
                    turn.close()

    # -- helpers -----------------------------------------------------------------------
    def _session(
        self, tenant: str, request: ChatCompletionRequest, *, cached: bool = False
    ) -> SessionTurn | None:
        """The request's session opened for its turn (the caller closes it), or None.
        ``cached``: from what this process wrote last, if it has it (only where a stale
        one can be redone: before anything was sent to the client)."""
        if request.session_id is None:
            return None
        turn = self.sessions.open_turn(tenant, request.session_id, cached=cached)
        try:
            self._check_history(turn)
        except BaseException:
            turn.close()
            raise
        return turn

    def _check_history(self, turn: SessionTurn) -> None:
        # Stored history reaches the model too: it may predate the filter's terms, or
        # come back from the archive.
        self.filter.check_texts(
            (m.content for m in turn.record.messages), "session_id", "the session's history"
        )

    @staticmethod
    def _prompt(turn: SessionTurn | None, request: ChatCompletionRequest) -> list[ChatMessage]:
        history = turn.record.messages if turn is not None else []
        return [*history, *request.messages]

    def _max_tokens(self, request: ChatCompletionRequest) -> int:
        return (
            request.max_completion_tokens or request.max_tokens or self.settings.default_max_tokens
        )

    def generate_request(
        self, request: ChatCompletionRequest, prompt: list[ChatMessage], tenant: str
    ) -> GenerateRequest:
        """The engine request for a chat request: one generation group of ``n`` choices
        (the prompt is prefilled once), with its constraints, tools and log-probabilities.
        Reusable by other chat-shaped endpoints."""
        return self.engine_request(
            tenant,
            request,
            self._max_tokens(request),
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs or 0,
            messages=prompt,
            tools=request.tools,
            tool_choice=request.tool_choice,
            parallel_tool_calls=(
                True if request.parallel_tool_calls is None else request.parallel_tool_calls
            ),
        )

    def _cache_key(self, tenant: str, request: ChatCompletionRequest) -> str | None:
        # Without a cache the key is not worth its cost (a dump and a hash of the whole
        # request: ~4 % of the gateway's CPU per chat, issue 15).
        if self.cache is None or request.temperature != 0 or request.stream:
            return None
        return ResponseCache.key(tenant, request.model_dump(mode="json"))
