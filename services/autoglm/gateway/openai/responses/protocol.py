"""OpenAI Responses API schemas, and the conversions between them and what the chat
serving core takes (``ChatCompletionRequest``, ``ChatMessage``) and gives
(``GenerateResult``): input items become chat messages, a result becomes output items,
and a finished response becomes its event sequence."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from autoglm.core.schemas import (
    ChatMessage,
    FinishReason,
    GenerateResult,
    SafeId,
    ToolCall,
    ToolCallFunction,
    random_hex,
)

ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
#: States a response never leaves.
TERMINAL: frozenset[str] = frozenset({"completed", "incomplete", "failed", "cancelled"})


def item_id(prefix: str) -> str:
    """An id in the Responses API's form: ``<prefix>_<32 hex digits>``."""
    return f"{prefix}_{random_hex()}"


def response_id() -> str:
    return item_id("resp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- input items ----------------------------------------------------------------------
class TextPart(_Strict):
    """A text content part; ``output_text`` parts (an earlier response's output sent
    back as input) keep their annotations and log-probabilities, which are ignored."""

    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    id: str | None = Field(default=None, max_length=128)
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[TextPart]
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @property
    def text(self) -> str:
        return (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )


class FunctionCallItem(_Strict):
    """A call the model made (from an earlier response's output)."""

    type: Literal["function_call"]
    id: str | None = Field(default=None, max_length=128)
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(max_length=65536)
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Strict):
    """The client's result of a function call, answering ``call_id``."""

    type: Literal["function_call_output"]
    id: str | None = Field(default=None, max_length=128)
    call_id: str = Field(min_length=1, max_length=128)
    output: str | list[TextPart]
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @property
    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


def _item_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_kind),
]


# -- tools and text format ------------------------------------------------------------
class FunctionTool(_Strict):
    """The Responses API's (flat) function tool."""

    type: Literal["function"] = "function"
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def to_chat(self) -> dict[str, Any]:
        function = self.model_dump(exclude={"type"}, exclude_none=True)
        return {"type": "function", "function": function}


class FunctionToolChoice(_Strict):
    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64)


class TextFormat(_Strict):
    """``text.format``: plain text, any JSON object, or JSON matching ``schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("text.format of type 'json_schema' needs a 'schema'")
        return self

    def to_chat(self) -> dict[str, Any] | None:
        if self.type == "text":
            return None
        if self.type == "json_object" or self.schema_ is None:
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": self.name or "response", "schema": self.schema_}
        if self.description is not None:
            spec["description"] = self.description
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}


class StreamOptions(_Strict):
    #: OpenAI pads deltas against side channels; these events are not padded.
    include_obfuscation: bool | None = None


class TextConfig(_Strict):
    format: TextFormat = Field(default_factory=TextFormat)


# -- the request ----------------------------------------------------------------------
class ResponsesRequest(_Strict):
    """Body of ``POST /v1/responses``."""

    model: str = Field(min_length=1, max_length=128)
    input: str | list[InputItem] = Field(min_length=1)
    instructions: str | None = None
    previous_response_id: SafeId | None = None
    #: Stored responses can be retrieved, continued (``previous_response_id``) and
    #: listed; ``false`` keeps nothing.
    store: bool = True
    #: Run through the pub/sub job path: answered ``queued`` at once.
    background: bool = False
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    #: ``disabled``: a context too long for the model is a 400; ``auto``: the oldest
    #: items of the conversation are dropped until it fits.
    truncation: Literal["auto", "disabled"] = "disabled"
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(
        default=None, max_length=16
    )
    user: str | None = Field(default=None, max_length=256)
    service_tier: str | None = Field(default=None, max_length=32)
    #: Labels that only identify the caller or route the request: accepted, unused.
    safety_identifier: str | None = Field(default=None, max_length=256)
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    #: Extra output data (log-probabilities, ...) is not served: only an empty list.
    include: list[str] | None = Field(default=None, max_length=0)
    stream_options: StreamOptions | None = None

    def items(self) -> list[MessageItem | FunctionCallItem | FunctionCallOutputItem]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)

    def to_chat_body(self, messages: list[ChatMessage]) -> dict[str, Any]:
        """The body of the chat request the shared serving core runs for this response
        (validated as a ``ChatCompletionRequest`` by the caller)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.model_dump() for m in messages],
            "stream": self.stream,
        }
        if self.max_output_tokens is not None:
            body["max_completion_tokens"] = self.max_output_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.tools:
            body["tools"] = [t.to_chat() for t in self.tools]
        if isinstance(self.tool_choice, FunctionToolChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        if self.text is not None and (fmt := self.text.format.to_chat()) is not None:
            body["response_format"] = fmt
        if self.user is not None:
            body["user"] = self.user
        return body


# -- conversions ----------------------------------------------------------------------
def to_messages(
    items: list[MessageItem | FunctionCallItem | FunctionCallOutputItem],
) -> list[ChatMessage]:
    """Input items as chat turns: consecutive function calls become one assistant turn
    with ``tool_calls``, outputs become ``tool`` turns."""
    out: list[ChatMessage] = []
    for item in items:
        if isinstance(item, MessageItem):
            out.append(ChatMessage(role=item.role, content=item.text))
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(
                id=item.call_id,
                function=ToolCallFunction(name=item.name, arguments=item.arguments),
            )
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                out[-1] = last.model_copy(update={"tool_calls": [*(last.tool_calls or []), call]})
            else:
                out.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
        else:
            out.append(ChatMessage(role="tool", content=item.text, tool_call_id=item.call_id))
    return out


def stored_input_items(
    items: list[MessageItem | FunctionCallItem | FunctionCallOutputItem],
) -> list[dict[str, Any]]:
    """Input items as ``GET /v1/responses/{id}/input_items`` lists them: each with an id."""
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            content = (
                [output_text(item.text)]
                if item.role == "assistant"
                else [{"type": "input_text", "text": item.text}]
            )
            out.append(
                {
                    "id": item.id or item_id("msg"),
                    "type": "message",
                    "role": item.role,
                    "content": content,
                    "status": item.status or "completed",
                }
            )
        elif isinstance(item, FunctionCallItem):
            out.append(
                {
                    "id": item.id or item_id("fc"),
                    "type": "function_call",
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                    "status": item.status or "completed",
                }
            )
        else:
            out.append(
                {
                    "id": item.id or item_id("fco"),
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": item.text,
                    "status": item.status or "completed",
                }
            )
    return out


def message_item(text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text(text)],
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id("fc"),
        "type": "function_call",
        "call_id": call.id,
        "name": call.function.name,
        "arguments": call.function.arguments,
        "status": status,
    }


def output_items(
    text: str, calls: list[ToolCall] | None, finish: FinishReason
) -> list[dict[str, Any]]:
    """A generation's output: the assistant's text as a message (unless it only called
    tools), then one ``function_call`` item per call."""
    items: list[dict[str, Any]] = []
    status = "incomplete" if finish in ("length", "content_filter", "cancelled") else "completed"
    if text or not calls:
        items.append(message_item(text, status))
    items.extend(function_call_item(call) for call in calls or [])
    return items


def context_turn(output: list[dict[str, Any]]) -> ChatMessage:
    """The assistant turn the next response in the chain sees for ``output``."""
    text = "".join(
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    calls = [
        ToolCall(
            id=item["call_id"],
            function=ToolCallFunction(name=item["name"], arguments=item["arguments"]),
        )
        for item in output
        if item["type"] == "function_call"
    ]
    return ChatMessage(role="assistant", content=text, tool_calls=calls or None)


def status_of(finish: FinishReason) -> tuple[ResponseStatus, dict[str, str] | None]:
    """A finished generation's response status and ``incomplete_details``."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    if finish == "cancelled":
        return "cancelled", None
    return "completed", None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """OpenAI's Response object (``GET /v1/responses/{id}``)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool
    error: ResponseError | None = None
    incomplete_details: dict[str, str] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[dict[str, Any]] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    completed_at: int | None = None

    @staticmethod
    def start(rid: str, request: ResponsesRequest, status: ResponseStatus) -> ResponseObject:
        """The response before any output: its settings as the request gave them."""
        choice = request.tool_choice
        return ResponseObject(
            id=rid,
            created_at=int(time.time()),
            status=status,
            background=request.background,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=request.model,
            parallel_tool_calls=(
                True if request.parallel_tool_calls is None else request.parallel_tool_calls
            ),
            previous_response_id=request.previous_response_id,
            store=request.store,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            tool_choice=(
                choice.model_dump() if isinstance(choice, FunctionToolChoice) else choice or "auto"
            ),
            tools=[t.model_dump() for t in request.tools or []],
            text={"format": (request.text or TextConfig()).format.model_dump(exclude_none=True)},
            truncation=request.truncation,
            user=request.user,
            metadata=dict(request.metadata or {}),
        )

    def finish(
        self, result: GenerateResult, text: str | None = None, finish: FinishReason | None = None
    ) -> ResponseObject:
        """This response with ``result``'s output (``text`` / ``finish`` when the content
        filter cut it)."""
        reason = finish or result.finish_reason
        output = output_items(result.text if text is None else text, result.tool_calls, reason)
        return self.finished(
            output, reason, result.prompt_tokens, result.completion_tokens, model=result.model
        )

    def finished(
        self,
        output: list[dict[str, Any]],
        finish: FinishReason,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        model: str,
    ) -> ResponseObject:
        """This response with its ``output``, status and usage."""
        status, details = status_of(finish)
        return self.model_copy(
            update={
                "model": model,
                "status": status,
                "incomplete_details": details,
                "output": output,
                "usage": ResponseUsage.model_validate(usage(prompt_tokens, completion_tokens)),
                "completed_at": int(time.time()) if status == "completed" else None,
            }
        )

    def failed(self, code: str, message: str) -> ResponseObject:
        return self.model_copy(
            update={"status": "failed", "error": ResponseError(code=code, message=message)}
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ResponseRecord(BaseModel):
    """What is stored under ``response:{tenant}:{id}``: the response, this request's
    input items, and ``context`` — the whole conversation up to and including this
    response's output, which is all the next response in a chain reads."""

    tenant: str
    response: ResponseObject
    input_items: list[dict[str, Any]] = Field(default_factory=list)
    context: list[ChatMessage] = Field(default_factory=list)
    #: Incremented on every change; the archiver keys its snapshots by it.
    version: int = 1


class InputItemsPage(BaseModel):
    """``GET /v1/responses/{id}/input_items``."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class InputItemsQuery(_Strict):
    after: str | None = Field(default=None, max_length=128)
    before: str | None = Field(default=None, max_length=128)
    limit: int = Field(default=20, ge=1, le=100)
    order: Literal["asc", "desc"] = "desc"


class RetrieveQuery(_Strict):
    stream: bool = False
    #: Resume a stream after this event's ``sequence_number``.
    starting_after: int | None = Field(default=None, ge=-1)


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class ResponseEvent(BaseModel):
    """One server-sent event of a streamed response (``type`` names it; the other
    fields are OpenAI's for that type)."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int


# -- events ---------------------------------------------------------------------------
class EventSequence:
    """Numbers events in order (``sequence_number``), as they are produced."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.next, **fields}
        self.next += 1
        return event


def item_events(seq: EventSequence, index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
    """The events that stream one finished output item, whole."""
    events: list[dict[str, Any]] = []
    if item["type"] == "message":
        opened = {**item, "status": "in_progress", "content": []}
        events.append(seq("response.output_item.added", output_index=index, item=opened))
        for c, part in enumerate(item["content"]):
            at = {"item_id": item["id"], "output_index": index, "content_index": c}
            events.append(seq("response.content_part.added", **at, part=output_text("")))
            if part["text"]:
                events.append(
                    seq("response.output_text.delta", **at, delta=part["text"], logprobs=[])
                )
            events.append(seq("response.output_text.done", **at, text=part["text"], logprobs=[]))
            events.append(seq("response.content_part.done", **at, part=part))
    else:
        opened = {**item, "arguments": "", "status": "in_progress"}
        events.append(seq("response.output_item.added", output_index=index, item=opened))
        at = {"item_id": item["id"], "output_index": index}
        if item["arguments"]:
            events.append(
                seq("response.function_call_arguments.delta", **at, delta=item["arguments"])
            )
        events.append(
            seq(
                "response.function_call_arguments.done",
                **at,
                name=item["name"],
                arguments=item["arguments"],
            )
        )
    events.append(seq("response.output_item.done", output_index=index, item=item))
    return events


def terminal_event(seq: EventSequence, response: ResponseObject) -> dict[str, Any]:
    kind = {
        "completed": "response.completed",
        "failed": "response.failed",
    }.get(response.status, "response.incomplete")
    return seq(kind, response=response.to_json())


def replay_events(response: ResponseObject) -> list[dict[str, Any]]:
    """The whole event sequence of a finished (background) response, the same on every
    replica and every read, so a client can resume after any ``sequence_number``."""
    seq = EventSequence()
    start = response.model_copy(
        update={"status": "queued", "output": [], "usage": None, "completed_at": None}
    ).model_copy(update={"error": None, "incomplete_details": None})
    events = [seq("response.created", response=start.to_json())]
    if response.status not in TERMINAL:
        return events
    running = start.model_copy(update={"status": "in_progress"})
    events.append(seq("response.in_progress", response=running.to_json()))
    for index, item in enumerate(response.output):
        events.extend(item_events(seq, index, item))
    events.append(terminal_event(seq, response))
    return events
