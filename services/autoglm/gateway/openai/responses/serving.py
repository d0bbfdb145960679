"""The Responses API over the chat serving core.

A response request is converted to the chat request the core runs (input items →
chat turns, function tools, ``text.format`` → ``response_format``), so limits, the
content filter, tools, structured outputs and sampling are chat's. What is added here:

* the chain: ``previous_response_id`` reads that one stored record, whose ``context``
  is the whole conversation so far; the new record stores it plus this turn;
* ``truncation: auto``: when the engine says the context is too long, the oldest turns
  are dropped (one at a time, then 2, 4, ... more) until it fits;
* ``background``: the record is stored ``queued`` and the engine request published to
  ``inference.requests`` (the job path); the result completes it exactly once, a
  cancel records ``cancelled`` first and tells inference to stop;
* events: live ones while streaming; for a background response a replay of its stored
  state, identical on every replica, so a stream can resume after any sequence number.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from typing import Any, TypeVar

from autoglm.core.errors import AutoGLMError, ConflictError, InvalidRequestError, NotFoundError
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import ChatMessage, InferenceResultEvent, parse
from autoglm.gateway import sse
from autoglm.gateway.context import RequestContext
from autoglm.gateway.jobs.store import JobStore
from autoglm.gateway.openai.chat.protocol import ChatCompletionRequest
from autoglm.gateway.openai.chat.serving import ChatCompletionService
from autoglm.gateway.openai.responses.protocol import (
    TERMINAL,
    EventSequence,
    InputItemsPage,
    InputItemsQuery,
    ResponseObject,
    ResponseRecord,
    ResponsesRequest,
    context_turn,
    item_id,
    output_text,
    replay_events,
    response_id,
    stored_input_items,
    terminal_event,
    to_messages,
)
from autoglm.gateway.openai.responses.store import ResponseStore
from autoglm.gateway.openai.serving import Served
from autoglm.gateway.openai.streaming import TokenStream
from autoglm.gateway.security.ratelimit import ChargeTokens

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Prefix of response ids; results of background responses are routed by it.
ID_PREFIX = "resp_"


@dataclass
class Turn:
    """A request resolved against its chain: the instructions, the conversation the
    model sees, and the chat request the core runs."""

    rid: str
    request: ResponsesRequest
    system: list[ChatMessage]
    conversation: list[ChatMessage]
    chat: ChatCompletionRequest
    input_items: list[dict[str, Any]]


@dataclass
class ResponseService:
    chat: ChatCompletionService
    store: ResponseStore
    jobs: JobStore
    _: KW_ONLY
    #: Charges a background response's tokens when its result is stored.
    charge: ChargeTokens | None = None
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        self.jobs.route(ID_PREFIX, self.on_result)

    # -- requests ----------------------------------------------------------------------
    def parse(self, body: bytes) -> ResponsesRequest:
        request = parse(ResponsesRequest, body)
        if request.background and not request.store:
            raise InvalidRequestError("background responses need store: true", param="store")
        return request

    def _turn(self, tenant: str, request: ResponsesRequest) -> Turn:
        history: list[ChatMessage] = []
        if request.previous_response_id is not None:
            previous, _ = self.store.get(tenant, request.previous_response_id)
            if previous.response.status not in TERMINAL:
                raise InvalidRequestError(
                    f"response {request.previous_response_id!r} is still "
                    f"{previous.response.status}; continue it once it has finished",
                    param="previous_response_id",
                )
            history = previous.context
        system = (
            [ChatMessage(role="system", content=request.instructions)]
            if request.instructions
            else []
        )
        items = request.items()
        conversation = [*history, *to_messages(items)]
        chat = self.chat.validate(
            parse(ChatCompletionRequest, request.to_chat_body([*system, *conversation]))
        )
        return Turn(response_id(), request, system, conversation, chat, stored_input_items(items))

    def _fit(
        self, turn: Turn, run: Callable[[list[ChatMessage]], T]
    ) -> tuple[T, list[ChatMessage]]:
        """``run`` on the turn's prompt; with ``truncation: auto``, on ever fewer of the
        oldest turns while the engine finds the context too long. Returns what ``run``
        returned and the conversation it ran on."""
        conversation, dropped, attempts = turn.conversation, 0, 0
        while True:
            try:
                return run([*turn.system, *conversation]), conversation
            except InvalidRequestError as exc:
                if (
                    turn.request.truncation != "auto"
                    or exc.code != "context_length_exceeded"
                    or len(conversation) <= 1
                ):
                    if exc.code == "context_length_exceeded":
                        exc.param = "input"
                    raise
            # One turn at a time (a refusal costs only a tokenization), then faster on
            # long conversations: 1, ... 1, 2, 4, ...
            attempts += 1
            step = 1 if attempts <= 8 else 2 ** (attempts - 8)
            dropped = min(dropped + step, len(turn.conversation) - 1)
            conversation = _without_orphans(turn.conversation[dropped:])

    # -- create ------------------------------------------------------------------------
    def create(self, ctx: RequestContext, request: ResponsesRequest) -> Served:
        tenant = ctx.tenant
        turn = self._turn(tenant, request)
        if request.background:
            # Its tokens are charged when its result is stored (``on_result``).
            return Served(self._submit(tenant, turn).to_json())
        start = ResponseObject.start(turn.rid, request, "in_progress")
        (result, choices), conversation = self._fit(
            turn, lambda prompt: self.chat.complete(ctx, turn.chat, prompt)
        )
        choice = choices[0]
        response = start.finish(result, text=choice.text, finish=choice.finish_reason)
        self._store_new(tenant, turn, response, [*conversation, context_turn(response.output)])
        ctx.charge(result.prompt_tokens + result.completion_tokens)
        return Served(response.to_json())

    def _store_new(
        self,
        tenant: str,
        turn: Turn,
        response: ResponseObject,
        context: list[ChatMessage],
    ) -> None:
        if turn.request.store:
            record = ResponseRecord(
                tenant=tenant, response=response, input_items=turn.input_items, context=context
            )
            self.store.create(record)

    def _submit(self, tenant: str, turn: Turn) -> ResponseObject:
        """Store the response ``queued`` and hand its generation to the job path."""
        response = ResponseObject.start(turn.rid, turn.request, "queued")
        record = ResponseRecord(
            tenant=tenant,
            response=response,
            input_items=turn.input_items,
            context=turn.conversation,
        )
        self.store.create(record)
        generate = self.chat.generate_request(turn.chat, [*turn.system, *turn.conversation], tenant)
        try:
            self.jobs.send(tenant, turn.rid, generate)
        except AutoGLMError as exc:
            # Not accepted: record why, so the id does not sit queued forever.
            with contextlib.suppress(AutoGLMError):
                failed = record.model_copy(
                    update={"response": response.failed(exc.code, exc.message)}
                )
                self.store.update(failed, self.store.get(tenant, turn.rid)[1])
            raise
        return response

    def on_result(self, tenant: str, rid: str, event: InferenceResultEvent) -> Ack:
        """Complete a background response from its ``inference.results`` message, once:
        a response that already finished (a redelivery, or cancelled) ignores it."""
        try:
            record, etag = self.store.get(tenant, rid)
        except NotFoundError:
            return Ack.SUCCESS  # deleted meanwhile
        except AutoGLMError:
            return Ack.RETRY
        if record.response.status in TERMINAL:
            return Ack.SUCCESS
        tokens = 0
        if event.result is not None:
            result = self.chat.filter.filter_result(event.result)
            response = record.response.finish(result)
            context = [*record.context, context_turn(response.output)]
            tokens = result.prompt_tokens + result.completion_tokens
        else:
            error = event.error or {}
            response = record.response.failed(
                str(error.get("code") or "server_error"), str(error.get("message") or "failed")
            )
            context = record.context
        try:
            self.store.update(
                record.model_copy(update={"response": response, "context": context}), etag
            )
        except AutoGLMError as exc:
            # A concurrent cancel (then the redelivery sees it finished), or the store is down.
            log.warning("response result not stored; retried", extra={"reason": exc.message})
            return Ack.RETRY
        if self.charge is not None and tokens:
            self.charge(tenant, tokens)
        return Ack.SUCCESS

    # -- streaming ---------------------------------------------------------------------
    def open_stream(self, ctx: RequestContext, request: ResponsesRequest) -> Iterator[bytes]:
        """Resolve the chain and start the generation (either may fail with a proper
        HTTP status), then return the SSE body."""
        tenant = ctx.tenant
        turn = self._turn(tenant, request)
        if request.background:
            response = self._submit(tenant, turn)
            return self._replay(tenant, response.id, -1, response)
        stream, conversation = self._fit(
            turn, lambda prompt: self.chat.open_chat_tokens(ctx, turn.chat, prompt)
        )
        return self._live(tenant, turn, stream, conversation)

    def _live(
        self,
        tenant: str,
        turn: Turn,
        stream: TokenStream,
        conversation: list[ChatMessage],
    ) -> Iterator[bytes]:
        seq = EventSequence()
        start = ResponseObject.start(turn.rid, turn.request, "in_progress")
        output: list[dict[str, Any]] = []
        message: dict[str, Any] | None = None
        calls: dict[int, dict[str, Any]] = {}

        def close_message(status: str) -> Iterator[bytes]:
            nonlocal message
            if message is None:
                return
            index, text = output.index(message), message["content"][0]["text"]
            at = {"item_id": message["id"], "output_index": index, "content_index": 0}
            message["status"] = status
            yield _event(seq("response.output_text.done", **at, text=text, logprobs=[]))
            yield _event(seq("response.content_part.done", **at, part=message["content"][0]))
            yield _event(seq("response.output_item.done", output_index=index, item=message))
            message = None

        def open_message() -> Iterator[bytes]:
            nonlocal message
            message = {
                "id": item_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            output.append(message)
            index = len(output) - 1
            yield _event(seq("response.output_item.added", output_index=index, item=message))
            message["content"] = [output_text("")]
            at = {"item_id": message["id"], "output_index": index, "content_index": 0}
            yield _event(seq("response.content_part.added", **at, part=output_text("")))

        try:
            yield _event(seq("response.created", response=start.to_json()))
            yield _event(seq("response.in_progress", response=start.to_json()))
            for piece in stream.pieces():
                if piece.tool_calls:
                    yield from close_message("completed")
                    for delta in piece.tool_calls:
                        yield from self._call_delta(seq, output, calls, delta)
                elif piece.text:
                    if message is None:
                        yield from open_message()
                    assert message is not None
                    message["content"][0]["text"] += piece.text
                    yield _event(
                        seq(
                            "response.output_text.delta",
                            item_id=message["id"],
                            output_index=output.index(message),
                            content_index=0,
                            delta=piece.text,
                            logprobs=[],
                        )
                    )
            finish = stream.finish_reason
            status = "incomplete" if finish in ("length", "content_filter") else "completed"
            if not output:
                yield from open_message()
            yield from close_message(status)
            final = stream.result.tool_calls if stream.result else None
            for n, (_, item) in enumerate(sorted(calls.items())):
                if final and n < len(final):  # the engine's parse is authoritative
                    item["call_id"] = final[n].id
                    item["name"] = final[n].function.name
                    item["arguments"] = final[n].function.arguments
                item["status"] = "completed"
                at = {"item_id": item["id"], "output_index": output.index(item)}
                yield _event(
                    seq(
                        "response.function_call_arguments.done",
                        **at,
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                )
                yield _event(
                    seq("response.output_item.done", output_index=output.index(item), item=item)
                )
            model = stream.result.model if stream.result else turn.request.model
            response = start.finished(output, finish, *stream.usage, model=model)
            self._store_new(tenant, turn, response, [*conversation, context_turn(output)])
            yield _event(terminal_event(seq, response))
        except AutoGLMError as exc:
            failed = start.failed(exc.code, exc.message)
            with contextlib.suppress(AutoGLMError):
                self._store_new(tenant, turn, failed, conversation)
            yield _event(seq("response.failed", response=failed.to_json()))
        finally:
            stream.close()

    @staticmethod
    def _call_delta(
        seq: EventSequence,
        output: list[dict[str, Any]],
        calls: dict[int, dict[str, Any]],
        delta: dict[str, Any],
    ) -> Iterator[bytes]:
        index = int(delta.get("index", 0))
        function = delta.get("function") or {}
        item = calls.get(index)
        if item is None:
            item = {
                "id": item_id("fc"),
                "type": "function_call",
                "call_id": delta.get("id") or item_id("call"),
                "name": function.get("name") or "",
                "arguments": "",
                "status": "in_progress",
            }
            calls[index] = item
            output.append(item)
            yield _event(
                seq("response.output_item.added", output_index=len(output) - 1, item=dict(item))
            )
        arguments = function.get("arguments") or ""
        if arguments:
            item["arguments"] += arguments
            yield _event(
                seq(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=output.index(item),
                    delta=arguments,
                )
            )

    # -- stored responses --------------------------------------------------------------
    def retrieve(self, tenant: str, rid: str) -> ResponseObject:
        return self.store.get(tenant, rid)[0].response

    def stream_stored(self, tenant: str, rid: str, starting_after: int | None) -> Iterator[bytes]:
        """A background response's events after ``starting_after`` (all when None)."""
        record, _ = self.store.get(tenant, rid)
        if not record.response.background:
            raise InvalidRequestError(
                "only background responses can be streamed again", param="stream"
            )
        after = -1 if starting_after is None else starting_after
        return self._replay(tenant, rid, after, record.response)

    def _replay(
        self, tenant: str, rid: str, after: int, response: ResponseObject
    ) -> Iterator[bytes]:
        deadline = time.monotonic() + self.chat.settings.request_timeout_s * 2
        while True:
            for event in replay_events(response):
                if event["sequence_number"] > after:
                    after = event["sequence_number"]
                    yield _event(event)
            if response.status in TERMINAL:
                return
            if time.monotonic() > deadline:
                return  # the client reconnects with starting_after
            time.sleep(self.poll_s)
            try:
                response = self.store.get(tenant, rid)[0].response
            except AutoGLMError as exc:
                yield _event({"type": "error", "sequence_number": after + 1, **_error(exc)})
                return

    def cancel(self, tenant: str, rid: str) -> ResponseObject:
        record, etag = self.store.get(tenant, rid)
        if not record.response.background:
            raise InvalidRequestError(
                "only responses created with background: true can be cancelled",
                param="response_id",
            )
        if record.response.status in TERMINAL:
            return record.response
        cancelled = record.response.model_copy(update={"status": "cancelled"})
        try:
            self.store.update(record.model_copy(update={"response": cancelled}), etag)
        except ConflictError:
            return self.retrieve(tenant, rid)  # the result landed first
        self._stop(tenant, rid)
        return cancelled

    def _stop(self, tenant: str, rid: str) -> None:
        try:
            self.chat.inference.cancel(f"{tenant}:{rid}")
        except AutoGLMError as exc:
            # Recorded as cancelled already; the result, when it comes, is ignored.
            log.warning("cancel not delivered to inference", extra={"reason": exc.message})

    def delete(self, tenant: str, rid: str) -> None:
        record, _ = self.store.get(tenant, rid)
        self.store.delete(tenant, rid)
        if record.response.background and record.response.status not in TERMINAL:
            self._stop(tenant, rid)

    def input_items(self, tenant: str, rid: str, query: InputItemsQuery) -> InputItemsPage:
        items = self.store.get(tenant, rid)[0].input_items
        if query.order == "desc":
            items = items[::-1]
        ids = [item["id"] for item in items]
        start, end = 0, len(items)
        for cursor, name in ((query.after, "after"), (query.before, "before")):
            if cursor is not None and cursor not in ids:
                raise InvalidRequestError(f"no input item {cursor!r} in this response", param=name)
        if query.after is not None:
            start = ids.index(query.after) + 1
        if query.before is not None:
            end = ids.index(query.before)
        page = items[start:end][: query.limit]
        return InputItemsPage(
            data=page,
            first_id=page[0]["id"] if page else None,
            last_id=page[-1]["id"] if page else None,
            has_more=start + len(page) < end,
        )


def _without_orphans(conversation: list[ChatMessage]) -> list[ChatMessage]:
    """Tool results at the start lost their call when older turns were dropped."""
    while len(conversation) > 1 and conversation[0].role == "tool":
        conversation = conversation[1:]
    return conversation


def _event(payload: dict[str, Any]) -> bytes:
    return sse.named_event(str(payload["type"]), payload)


def _error(exc: AutoGLMError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "param": exc.param}
