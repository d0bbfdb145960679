"""One streamed generation as the OpenAI endpoints consume it: text deltas cut at the
content filter, then the finish reason and token counts. Its tokens are charged once,
when it is closed: finished, failed, cut or abandoned by the client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from autoglm.core.errors import AutoGLMError
from autoglm.core.schemas import FinishReason, GenerateRequest, GenerateResult, parse
from autoglm.gateway.inference_client import InferenceClient
from autoglm.gateway.security.content_filter import ContentFilter


@dataclass
class Piece:
    """What one SSE chunk carries: text, the log-probabilities that came with it, or a
    tool-call delta (OpenAI's ``delta.tool_calls`` items)."""

    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] | None = None


class TokenStream:
    def __init__(
        self,
        first: dict[str, Any] | None,
        frames: Iterator[dict[str, Any]],
        content_filter: ContentFilter,
        on_close: Callable[[int], None] | None = None,
    ) -> None:
        self._first = first
        self._frames = frames
        self._filter = content_filter
        self._on_close = on_close
        self.text = ""
        self.finish_reason: FinishReason = "stop"
        self.result: GenerateResult | None = None
        #: Delta frames received; the engine sends at most one per generated token.
        self.deltas = 0

    @classmethod
    def open(
        cls,
        inference: InferenceClient,
        request: GenerateRequest,
        content_filter: ContentFilter,
        on_close: Callable[[int], None] | None = None,
    ) -> TokenStream:
        """Start the generation and wait for its first frame, so that an unknown model
        or an overloaded engine still fails with a proper HTTP status, not mid-stream.
        ``on_close`` is handed the tokens to charge when the stream is closed."""
        frames = inference.stream(request)
        try:
            first = next(frames, None)
        except AutoGLMError:
            _close(frames)
            raise
        return cls(first, frames, content_filter, on_close)

    def __iter__(self) -> Iterator[str]:
        """Non-empty text deltas (see ``pieces``)."""
        for piece in self.pieces():
            if piece.text:
                yield piece.text

    def pieces(self) -> Iterator[Piece]:
        """Text deltas with their log-probabilities, and tool-call deltas; stops early
        when the filter cuts the output. With a filter, the last ``stream_holdback``
        characters wait for the next delta, so a blocked term split across deltas is
        never half-sent before the cut."""
        holdback = self._filter.stream_holdback
        sent = 0
        logprobs: list[dict[str, Any]] = []
        pending = [self._first] if self._first else []
        for frame in _chain(pending, self._frames):
            if "result" in frame:
                self.result = parse(GenerateResult, frame["result"])
                self.finish_reason = self.result.finish_reason
                continue
            if "tool_calls" in frame:
                self.deltas += 1
                yield Piece(tool_calls=list(frame["tool_calls"]))
                continue
            self.deltas += 1
            self.text += str(frame.get("delta", ""))
            logprobs.extend(frame.get("logprobs") or [])
            cut = self._filter.first_violation(self.text)
            if cut is not None:
                self.text = self.text[:cut]
                self.finish_reason = "content_filter"
                if self.text[sent:]:
                    yield Piece(self.text[sent:], logprobs)
                return
            ready = len(self.text) - holdback
            if ready > sent or (logprobs and not holdback):
                yield Piece(self.text[sent:ready] if ready > sent else "", logprobs)
                sent = max(sent, ready)
                logprobs = []
        if self.text[sent:] or logprobs:
            yield Piece(self.text[sent:], logprobs)

    @property
    def usage(self) -> tuple[int, int]:
        return (self.result.prompt_tokens, self.result.completion_tokens) if self.result else (0, 0)

    @property
    def tokens(self) -> int:
        """Tokens to charge: the engine's count once the stream finished; before that
        (client gone, output cut) the deltas received, a lower bound of what was
        generated, since the prompt's count only comes with the result."""
        prompt, completion = self.usage
        return prompt + completion if self.result else self.deltas

    def close(self) -> None:
        """Closing the upstream stream cancels the generation in the engine; the tokens
        are charged on the first close only."""
        try:
            _close(self._frames)
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close(self.tokens)


def _chain(head: list[dict[str, Any]], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from head
    yield from rest


def _close(frames: Iterator[dict[str, Any]]) -> None:
    close = getattr(frames, "close", None)
    if close is not None:
        close()
