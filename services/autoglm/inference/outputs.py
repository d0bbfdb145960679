"""A request's way through the engine besides its tokens: the sampling plan prepared
before it is queued (constraint compiled, tool-call grammar when calls are forced) and
the result shaped after it (log-probabilities, tool calls parsed from the text).

Streams are shaped here too (``StreamShaper``): text deltas with their tokens'
log-probabilities, or tool-call deltas as OpenAI sends them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from autoglm.core.schemas import (
    GenerateChoice,
    GenerateRequest,
    GenerateResult,
    ToolCall,
    new_call_id,
)
from autoglm.inference.constraints import request_grammar
from autoglm.inference.sampling import SamplingPlan, TokenText

if TYPE_CHECKING:
    from autoglm.inference.engine import LoadedModel
    from autoglm.inference.scheduler import RequestHandle


def prepare(loaded: LoadedModel, request: GenerateRequest) -> SamplingPlan:
    """The plan of one request; raises InvalidRequestError for a bad constraint."""
    plan = SamplingPlan()
    if request.sampling.logprobs:
        plan.token_text = loaded.token_text
    grammar = request_grammar(request)
    tools = loaded.adapter.tool_format if request.calls_tools else None
    if tools is not None and request.tools:
        plan.tool_format = tools
        forced = tools.forced_grammar(request)
        if forced is not None:
            if grammar is not None:
                from autoglm.core.errors import InvalidRequestError

                raise InvalidRequestError(
                    "a forced tool call cannot be combined with response_format",
                    param="tool_choice",
                )
            grammar = (forced, "tools")
            plan.forced_tools = True
    if grammar is not None:
        plan.constraint = loaded.grammar().constraint(*grammar)
    return plan


def group_requests(request: GenerateRequest) -> list[GenerateRequest]:
    """The ``n`` sequences of a request: choice ``i`` is seeded ``seed + i``."""
    seed = request.sampling.seed
    return [
        request.model_copy(
            update={
                "n": 1,
                "sampling": request.sampling.model_copy(
                    update={"seed": None if seed is None else seed + i}
                ),
            }
        )
        for i in range(request.n)
    ]


def group_plans(first: SamplingPlan, n: int) -> list[SamplingPlan]:
    """Plans for ``n`` sequences: each follows its own copy of the constraint."""
    plans = [first]
    for _ in range(n - 1):
        plans.append(
            SamplingPlan(
                constraint=first.constraint.fork() if first.constraint else None,
                token_text=first.token_text,
                tool_format=first.tool_format,
                forced_tools=first.forced_tools,
            )
        )
    return plans


class GroupHandle:
    """The ``n`` sequences of one request, seen as one handle: the result has every
    choice (``choices``), the first at the top level; cancelling cancels all."""

    def __init__(self, request: GenerateRequest, handles: list[RequestHandle]) -> None:
        self.request = request
        self.handles = handles
        self.plan = handles[0].plan

    @property
    def done(self) -> bool:
        return all(h.done for h in self.handles)

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    def wait(self, timeout: float) -> bool:
        import time

        end = time.monotonic() + timeout
        return all(h.wait(max(0.0, end - time.monotonic())) for h in self.handles)

    @property
    def ttft(self) -> float | None:
        return self.handles[0].ttft

    @property
    def batch_size_at_join(self) -> int:
        return self.handles[0].batch_size_at_join

    def result(self, timeout: float | None = None) -> GenerateResult:
        import time

        end = None if timeout is None else time.monotonic() + timeout
        results = []
        for h in self.handles:
            left = None if end is None else max(0.0, end - time.monotonic())
            results.append(finish(h, h.result(left)))
        first = results[0]
        choices = [
            GenerateChoice(
                index=i,
                text=r.text,
                finish_reason=r.finish_reason,
                completion_tokens=r.completion_tokens,
                logprobs=r.logprobs,
                tool_calls=r.tool_calls,
            )
            for i, r in enumerate(results)
        ]
        return first.model_copy(
            update={
                "request_id": self.request.request_id,
                "completion_tokens": sum(r.completion_tokens for r in results),
                "choices": choices,
            }
        )


def finish(handle: Any, result: GenerateResult) -> GenerateResult:
    """The scheduler's result with what the plan collected: log-probabilities, and the
    tool calls parsed from the text (``finish_reason`` 'tool_calls')."""
    if isinstance(handle, GroupHandle):
        return result  # finished choice by choice in GroupHandle.result
    plan, request = handle.plan, handle.request
    update: dict[str, Any] = {}
    if request.sampling.logprobs:
        update["logprobs"] = list(plan.output.logprobs)
    if plan.tool_format is not None and result.finish_reason == "stop":
        content, calls = plan.tool_format.parse(result.text, request)
        for call, streamed_id in zip(calls, plan.call_ids, strict=False):
            call.id = streamed_id  # the ids the stream already announced
        if calls:
            update.update(text=content, tool_calls=calls, finish_reason="tool_calls")
    return result.model_copy(update=update) if update else result


def stream_frames(handle: RequestHandle) -> Iterator[dict[str, Any]]:
    """Frames of a streamed generation: ``{"delta": text, "logprobs": [...]}`` as text is
    decoded. With tools, ``{"tool_calls": [...]}`` deltas as OpenAI sends them: forced
    calls (their output is calls by grammar) as they are generated, the arguments in
    pieces; with 'auto', text that may still be a call is held back and sent as call
    deltas once the whole of it parses, or as text when it does not. The caller sends
    the final ``{"result": ...}`` from ``finish``."""
    plan, request = handle.plan, handle.request
    if plan.forced_tools:
        yield from _forced_call_frames(handle)
        return
    sent_logprobs = 0
    tools = plan.tool_format
    held = ""
    for delta in handle:
        frame: dict[str, Any] = {}
        if request.sampling.logprobs:
            fresh = plan.output.logprobs[sent_logprobs:]
            sent_logprobs += len(fresh)
            frame["logprobs"] = [lp.model_dump(mode="json") for lp in fresh]
        if tools is not None:
            held += delta
            if tools.maybe_call(held, request):
                if frame.get("logprobs"):
                    yield {"delta": "", **frame}
                continue
            delta, held = held, ""
        if delta or frame.get("logprobs"):
            yield {"delta": delta, **frame}
    if tools is not None and held:
        result = finish(handle, handle.result(1))
        if result.tool_calls:
            yield from tool_call_deltas(result.tool_calls)
        elif result.text:
            yield {"delta": result.text}


def _forced_call_frames(handle: RequestHandle) -> Iterator[dict[str, Any]]:
    """Call deltas while forced calls are generated: a call's id and name once its name
    is complete, then each new piece of its arguments."""
    fmt, text = handle.plan.tool_format, ""
    ids: list[str] = []
    sent: list[int] = []  # characters of each call's arguments already sent
    for delta in handle:
        text += delta
        for index, call in enumerate(fmt.partial_calls(text)):
            if index == len(ids):
                ids.append(new_call_id())
                sent.append(0)
                yield {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": ids[index],
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            piece = call.arguments[sent[index] :]
            if piece:
                sent[index] += len(piece)
                yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
    handle.plan.call_ids = ids


def tool_call_deltas(calls: list[ToolCall], piece: int = 16) -> Iterator[dict[str, Any]]:
    """OpenAI's streamed tool calls: the id and name first, then the arguments in pieces."""
    for index, call in enumerate(calls):
        yield {
            "tool_calls": [
                {
                    "index": index,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": ""},
                }
            ]
        }
        args = call.function.arguments
        for start in range(0, len(args), piece):
            yield {
                "tool_calls": [
                    {"index": index, "function": {"arguments": args[start : start + piece]}}
                ]
            }


def canonical_arguments(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


__all__ = ["TokenText", "finish", "prepare", "stream_frames", "tool_call_deltas"]
