"""Payloads that cross the sidecars: one definition used by sender and receiver.

The gateway translates OpenAI requests into these; ``inference`` and ``archiver`` accept
them over service invocation and pub/sub. ``parse`` turns a validation failure into an
``InvalidRequestError`` that names the offending field.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from autoglm.core.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

_SURROGATE = re.compile("[\ud800-\udfff]")
#: A JSON escape that may decode to a UTF-16 surrogate (``\\udXXX`` from d800 on). It
#: also matches an escaped backslash followed by such text, or a proper escaped pair:
#: those only cost the full walk of ``_check_decoded``, never a wrong answer.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

#: The one rule for ids. Tenants, sessions, jobs, responses and attachments become
#: parts of state keys, URL path segments and folder names: no separators, no ``:``, no
#: leading dot (so never ``.``, ``..`` or a hidden name), never empty, at most
#: ``SAFE_ID_MAX_LENGTH`` characters (``TENANT_MAX_LENGTH`` for tenants). Every check of
#: an id (``SafeId``, ``TenantId``, ``is_safe_id``, the archiver's path components, the
#: OpenAPI document's path parameters) is made from these constants.
SAFE_ID = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
SAFE_ID_MAX_LENGTH = 128
TENANT_MAX_LENGTH = 64
_SAFE_ID = re.compile(SAFE_ID)

#: An id that is safe as a state key part, a URL path segment and a folder name.
SafeId = Annotated[
    str, StringConstraints(min_length=1, max_length=SAFE_ID_MAX_LENGTH, pattern=SAFE_ID)
]
#: A tenant: a ``SafeId`` of at most ``TENANT_MAX_LENGTH`` characters.
TenantId = Annotated[
    str, StringConstraints(min_length=1, max_length=TENANT_MAX_LENGTH, pattern=SAFE_ID)
]


def is_safe_id(value: str, max_length: int = SAFE_ID_MAX_LENGTH) -> bool:
    """Whether ``value`` is a ``SafeId`` (a ``TenantId`` with ``TENANT_MAX_LENGTH``)."""
    return 0 < len(value) <= max_length and _SAFE_ID.fullmatch(value) is not None


#: Default topic for async inference results (DESIGN.md).
RESULTS_TOPIC = "inference.results"
REQUESTS_TOPIC = "inference.requests"
SNAPSHOTS_TOPIC = "session.snapshots"
AUDIT_TOPIC = "audit"
PUBSUB = "pubsub"
STATESTORE = "statestore"
SECRETSTORE = "vault"


def random_hex() -> str:
    """A new id's random part: 128 random bits as 32 hex digits, a uuid4's length for a
    fifth of its CPU (every request makes a few: issue 15)."""
    return secrets.token_hex(16)


def new_id(prefix: str) -> str:
    return f"{prefix}-{random_hex()}"


class Payload(BaseModel):
    """Strict base: unknown fields are rejected so a misspelt option is never ignored."""

    model_config = ConfigDict(extra="forbid")


class ToolCallFunction(Payload):
    name: str = Field(min_length=1, max_length=64)
    #: The arguments as a JSON text, as OpenAI sends them.
    arguments: str = Field(default="{}", max_length=65536)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCall(Payload):
    id: str = Field(default_factory=new_call_id, max_length=128)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(Payload):
    """A turn: ``content`` is text ("" for an assistant turn that only calls tools);
    OpenAI's list of text parts is accepted and joined. Assistant turns may carry
    ``tool_calls``; ``tool`` turns answer one with ``tool_call_id``."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = ""
    name: str | None = Field(default=None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=128)
    tool_call_id: str | None = Field(default=None, max_length=128)
    #: An assistant turn's refusal as OpenAI returned it (SDKs send replies back as
    #: history); kept, not rendered.
    refusal: str | None = Field(default=None, max_length=65536)

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        if value is None:
            return ""
        if isinstance(value, list):
            texts: list[object] = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                    raise ValueError("only text content parts are supported")
                texts.append(part.get("text"))
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("a text content part needs a 'text' string")
            return "".join(str(t) for t in texts)
        return value

    @model_validator(mode="after")
    def _roles(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Unset tool fields are left out, so plain turns stay ``{role, content}``."""
        data: dict[str, Any] = handler(self)
        for key in ("name", "tool_calls", "tool_call_id", "refusal"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates take it (no unset fields; arguments parsed)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.function.name,
                        "arguments": _json_or_text(c.function.arguments),
                    },
                }
                for c in self.tool_calls
            ]
        return out


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class FunctionDef(Payload):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = Field(default=None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(Payload):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(Payload):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(Payload):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(Payload):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    name: str = Field(default="response", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Payload):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


class StructuredOutputs(Payload):
    """Extension (as vLLM's ``structured_outputs``): exactly one constraint."""

    json_: dict[str, Any] | bool | None = Field(default=None, alias="json")
    regex: str | None = Field(default=None, min_length=1, max_length=4096)
    choice: list[str] | None = Field(default=None, min_length=1, max_length=1024)
    grammar: str | None = Field(default=None, min_length=1, max_length=65536)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [k for k in ("json_", "regex", "choice", "grammar") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'json', 'regex', 'choice' or 'grammar'")
        return self


#: Stop sequences per request (OpenAI allows 4; a few more cost nothing).
MAX_STOP_SEQUENCES = 8
#: Longest stop sequence: each is matched against the tail of the decoded text.
MAX_STOP_CHARS = 256


class SamplingParams(Payload):
    """Per-request decoding settings; each sequence in a batch keeps its own."""

    max_tokens: int = Field(default=128, ge=1, le=32768)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    #: torch's generator seeds are 64-bit.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    #: OpenAI's penalties, on the tokens generated so far.
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    #: Extension (as in Hugging Face / vLLM): > 1 discourages any token already in the
    #: prompt or output, < 1 favours it.
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    #: Token id -> bias added to its logit (-100 bans, 100 forces).
    logit_bias: dict[int, float] = Field(default_factory=dict, max_length=1024)
    #: No end of sequence (EOS or ``stop_token_ids``) before this many tokens.
    min_tokens: int = Field(default=0, ge=0, le=32768)
    #: More token ids that end the generation (the token is not part of the text).
    stop_token_ids: list[int] = Field(default_factory=list, max_length=64)
    #: Extension for benchmarks: keep generating past the model's end-of-sequence tokens.
    ignore_eos: bool = False
    #: Return the chosen tokens' log-probabilities, with this many alternatives each.
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, bias: dict[int, float]) -> dict[int, float]:
        for token, value in bias.items():
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"bias of token {token} must be between -100 and 100")
            if token < 0:
                raise ValueError(f"token id {token} is negative")
        return bias


class GenerateRequest(Payload):
    """One generation: either chat ``messages`` (templated by the model) or a raw ``prompt``."""

    request_id: str = Field(default_factory=lambda: new_id("req"), min_length=1, max_length=128)
    model: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    prompt: str | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    #: The caller gives up after this long (e.g. the gateway's HTTP timeout); the engine
    #: then drops the request instead of finishing work nobody will read.
    timeout_s: float | None = Field(default=None, gt=0, le=86400)
    #: Completions generated for the prompt: one group, the prompt prefilled once.
    n: int = Field(default=1, ge=1, le=16)
    #: Constrained decoding: OpenAI's ``response_format`` ...
    response_format: ResponseFormat | None = None
    #: ... or the extension's regex / choice / JSON schema / Lark grammar.
    structured_outputs: StructuredOutputs | None = None
    #: Function tools the model may call (rendered by the model's chat template).
    tools: list[ToolDef] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    #: Whose request this is: the engine schedules tenants fairly and caps each one's
    #: share. Set by the gateway from the authenticated principal.
    tenant: TenantId = "default"

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of 'messages' or 'prompt' is required")
        if self.response_format is not None and self.structured_outputs is not None:
            raise ValueError("give either 'response_format' or 'structured_outputs', not both")
        if self.tools and self.prompt is not None:
            raise ValueError("'tools' needs chat 'messages'")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or []]
            if choice.function.name not in names:
                raise ValueError(f"tool_choice names {choice.function.name!r}, not in tools")
        elif choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs 'tools'")
        return self

    @property
    def calls_tools(self) -> bool:
        """Whether the model is offered tools (``tool_choice`` is not 'none')."""
        return bool(self.tools) and self.tool_choice != "none"


FinishReason = Literal["stop", "length", "content_filter", "cancelled", "tool_calls"]


class TopLogprob(Payload):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(Payload):
    """One generated token, OpenAI's chat ``logprobs.content[i]``."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class GenerateChoice(Payload):
    index: int = 0
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCall] | None = None


class GenerateResult(Payload):
    """The first (or only) completion at the top level; with ``n`` > 1 all of them in
    ``choices`` too, and ``completion_tokens`` counts them all."""

    request_id: str
    model: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    created: int = Field(default_factory=lambda: int(time.time()))
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCall] | None = None
    choices: list[GenerateChoice] = Field(default_factory=list)

    def all_choices(self) -> list[GenerateChoice]:
        if self.choices:
            return self.choices
        return [
            GenerateChoice(
                text=self.text,
                finish_reason=self.finish_reason,
                completion_tokens=self.completion_tokens,
                logprobs=self.logprobs,
                tool_calls=self.tool_calls,
            )
        ]


class EmbedRequest(Payload):
    model: str | None = None
    input: list[str] = Field(min_length=1, max_length=2048)


class EmbedResult(Payload):
    model: str
    data: list[list[float]]
    prompt_tokens: int


class ModelRef(Payload):
    """Body of the admin methods ``load_model`` / ``unload_model``."""

    model: str = Field(min_length=1, max_length=128)


class ModelState(Payload):
    """Reply of ``load_model`` / ``unload_model``."""

    model: str
    state: str


class ModelsReply(Payload):
    """Reply of inference's ``models``: the registry's entries (``id``, ``kind``,
    ``state``, ``created``...)."""

    data: list[dict[str, Any]]


_INTERNAL_TOPICS = frozenset({REQUESTS_TOPIC, SNAPSHOTS_TOPIC, AUDIT_TOPIC})


class InferenceRequestEvent(Payload):
    """Published to ``inference.requests``; the result goes to ``reply_topic``."""

    request_id: str = Field(min_length=1, max_length=128)
    reply_topic: str = Field(
        default=RESULTS_TOPIC,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
    )
    request: GenerateRequest

    @field_validator("reply_topic")
    @classmethod
    def _not_internal(cls, topic: str) -> str:
        # A result must not land where another app takes it for something else.
        if topic in _INTERNAL_TOPICS or topic.endswith(".deadletter"):
            raise ValueError(f"{topic!r} is an internal topic and cannot take results")
        return topic

    @model_validator(mode="after")
    def _same_id(self) -> InferenceRequestEvent:
        self.request.request_id = self.request_id
        return self


class CancelRequest(Payload):
    """Body of inference's ``cancel`` method: a request sent to ``inference.requests``."""

    request_id: str = Field(min_length=1, max_length=128)


class CancelReply(Payload):
    request_id: str
    cancelled: bool


class InferenceResultEvent(Payload):
    request_id: str
    result: GenerateResult | None = None
    error: dict[str, Any] | None = None


class SnapshotEvent(Payload):
    """A session's full history at ``version``, published on every change; or, with
    ``deleted``, the session's deletion at ``version``, so the archive forgets it too."""

    tenant: TenantId
    session_id: SafeId
    version: int = Field(ge=1)
    messages: list[ChatMessage]
    model: str | None = None
    created: float = Field(default_factory=time.time)
    # Write now, regardless of the autosave policy (client disconnected mid-stream,
    # publisher shutting down).
    flush: bool = False
    # The session was deleted at ``version``: the archiver removes every version it holds
    # and ignores later-arriving events at or below it. Same topic as the snapshots, so
    # one subscription (and its ordering, retries and dead letter) covers both.
    deleted: bool = False
    #: What else the archive keeps with this history and gives back on restore: a stored
    #: Responses API response (``response:{tenant}:{id}``) is archived as a snapshot of
    #: its conversation with the response object here. None for sessions.
    record: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _deletion_carries_no_history(self) -> SnapshotEvent:
        # A deletion must not ship the very history it deletes through the broker.
        if self.deleted and (self.messages or self.record):
            raise ValueError("a deletion event carries no messages")
        return self


class AuditEvent(Payload):
    time: float = Field(default_factory=time.time)
    tenant: TenantId
    user: str | None = None
    role: str | None = None
    action: str
    resource: str
    model: str | None = None
    client_ip: str | None = None
    status: int
    latency_ms: float
    trace_id: str | None = None
    request_id: str | None = None


#: Deepest nesting of arrays and objects accepted in a request body. Real requests
#: nest a few levels; deeper ones only cost stack and CPU wherever they are walked.
MAX_JSON_DEPTH = 64


def _check_decoded(value: Any) -> None:
    """Refuse nesting deeper than ``MAX_JSON_DEPTH`` and lone UTF-16 surrogates.

    JSON may escape a surrogate (``"\\ud800"``) and ``json.loads`` accepts it, but such a
    string cannot be encoded as UTF-8 on its way to a sidecar, a log or a file. The walk
    is iterative, so no body can exhaust the stack here."""
    todo: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while todo:
        item, loc = todo.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                param = ".".join(str(p) for p in loc) or None
                raise InvalidRequestError(
                    f"'{param}': contains a lone UTF-16 surrogate (not valid Unicode text)",
                    param=param,
                    code="invalid_unicode",
                )
            continue
        if not isinstance(item, (dict, list)):
            continue
        if len(loc) >= MAX_JSON_DEPTH:
            raise _too_deep()
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in reversed(list(pairs)):
            todo.append((child, (*loc, key)))
            if isinstance(key, str) and _SURROGATE.search(key):
                todo.append((key, (*loc, key)))


def _too_deep() -> InvalidRequestError:
    return InvalidRequestError(
        f"body is nested too deeply: at most {MAX_JSON_DEPTH} levels of arrays and objects",
        code="invalid_json",
    )


def _may_need_check(text: str) -> bool:
    """Whether the JSON ``text`` could decode to something ``_check_decoded`` refuses.
    Most bodies cannot, and their walk (twice ``json.loads``'s time, on every request in
    the gateway and again in inference: issue 15) is skipped: nesting is at most as deep
    as the text has ``[`` and ``{``, and a lone surrogate comes only from a surrogate in
    the text itself or from a ``\\u`` escape of one."""
    return (
        text.count("[") + text.count("{") > MAX_JSON_DEPTH
        or _SURROGATE.search(text) is not None
        or _SURROGATE_ESCAPE.search(text) is not None
    )


def load_json_object(data: bytes | str) -> dict[str, Any]:
    """A request body as a JSON object of valid Unicode, or an InvalidRequestError."""
    try:
        # As ``json.loads`` decodes bytes (surrogates passed through, then refused below).
        text = (
            data.decode(json.detect_encoding(data), "surrogatepass")
            if isinstance(data, (bytes, bytearray))
            else data
        )
        value = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        # The C decoder gives up at the interpreter's recursion limit (~1000 levels).
        raise _too_deep() from None
    if not isinstance(value, dict):
        raise InvalidRequestError("body must be a JSON object", code="invalid_json")
    if _may_need_check(text):
        _check_decoded(value)
    return value


def parse(model: type[M], data: bytes | str | dict[str, Any]) -> M:
    """Validate ``data`` as ``model``; raise InvalidRequestError naming the first bad field."""
    if isinstance(data, (bytes, str)):
        data = load_json_object(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        where = f"'{param}': " if param else ""
        raise InvalidRequestError(f"{where}{err['msg']}", param=param) from None
