"""Agent-ready API through the real mesh with the official ``openai`` SDK, unchanged:
tools and tool choice, a full tool loop, structured outputs (``parse`` with a pydantic
model, a JSON schema streamed), log-probabilities and ``n``; the same options on the Dapr
``generate`` method; and the Dapr Conversation API (alpha2) with tools, through a real
daprd whose ``conversation.openai`` component points at the gateway."""

from __future__ import annotations

import json
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from autoglm.core.streaming import stream_generate
from autoglm.devstack.sidecars import SidecarPorts, start_daprd
from tests.e2e.conftest import Mesh

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ARGS_SCHEMA = WEATHER["function"]["parameters"]


@pytest.fixture(scope="module")
def client(mesh: Mesh) -> openai.OpenAI:
    token = mesh.headers()["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{mesh.gateway_url}/v1", api_key=token, max_retries=0)


def _ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_required_tool_call_with_valid_arguments(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo-glm",
        messages=_ask("What is the weather in Paris?"),  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=400,  # parallel calls: the random demo model may chain a few
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls and choice.message.content is None
    for call in calls:
        assert call.type == "function" and call.id
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        jsonschema.validate(json.loads(call.function.arguments), ARGS_SCHEMA)  # type: ignore[union-attr]


def test_full_tool_loop(client: openai.OpenAI) -> None:
    """call -> tool result -> answer, with the SDK's own message objects in the history."""
    messages: list[Any] = _ask("Weather in Rome?")
    first = client.chat.completions.create(
        model="demo-glm",
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
    )
    message = first.choices[0].message
    assert message.tool_calls and first.choices[0].finish_reason == "tool_calls"
    messages.append(message)
    for call in message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'})
    answer = client.chat.completions.create(
        model="demo-glm",
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=8,  # type: ignore[list-item]
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)


def test_streamed_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="demo-glm",
        messages=_ask("Weather?"),  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=64,
        stream=True,
    )
    name, args, finish, pieces = "", "", None, 0
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            name += (call.function and call.function.name) or ""
            args += (call.function and call.function.arguments) or ""
            pieces += 1
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls" and pieces > 2
    jsonschema.validate(json.loads(args), ARGS_SCHEMA)


class Address(BaseModel):
    city: Literal["Paris", "Rome"]
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    address: Address


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    for _ in range(3):
        completion = client.chat.completions.parse(
            model="demo-glm",
            messages=_ask("Invent a person"),  # type: ignore[arg-type]
            response_format=Person,
            max_tokens=120,
        )
        choice = completion.choices[0]
        if choice.finish_reason == "length":
            continue
        person = choice.message.parsed
        assert isinstance(person, Person) and 0 <= person.age <= 120
        return
    pytest.fail("three parses cut at max_tokens")


def test_json_schema_streamed(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 5},
            "ok": {"type": "boolean"},
        },
        "required": ["tags", "ok"],
        "additionalProperties": False,
    }
    stream = client.chat.completions.create(
        model="demo-glm",
        messages=_ask("Tags?"),  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "tags", "schema": schema, "strict": True},
        },
        max_tokens=60,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)


def test_logprobs_and_n(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo-glm",
        messages=_ask("Hello"),  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(t.top_logprobs) == 5 for t in content)
    # One entry per generated token (an end token has none).
    assert reply.usage is not None
    assert len(content) in (reply.usage.completion_tokens, reply.usage.completion_tokens - 1)
    assert all(t.top_logprobs[0].logprob >= t.logprob for t in content)
    many = client.chat.completions.create(
        model="demo-glm",
        messages=_ask("Hi"),
        max_tokens=5,
        n=3,
        seed=7,  # type: ignore[arg-type]
    )
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.usage is not None and many.usage.completion_tokens >= 3
    streamed = client.chat.completions.create(
        model="demo-glm",
        messages=_ask("Hello"),  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    tokens = [
        t.token
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert tokens == [t.token for t in content]


def test_completions_logprobs_and_bad_schema(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="demo-glm", prompt="Once upon", max_tokens=4, temperature=0, logprobs=3
    )
    logprobs = completion.choices[0].logprobs
    assert (
        logprobs is not None
        and logprobs.tokens
        and len(logprobs.top_logprobs or []) == len(logprobs.tokens)
    )
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="demo-glm",
            messages=_ask("x"),  # type: ignore[arg-type]
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nope"}},
            },
        )
    assert "schema" in str(exc.value)


def test_dapr_generate_accepts_the_same_options(mesh: Mesh) -> None:
    """Invocation, streaming and pub/sub callers send response_format, tools, logprobs, n."""
    dapr = mesh.gateway.client()  # the access lists let only the gateway call inference
    body = {
        "messages": _ask("weather?"),
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "sampling": {"max_tokens": 64, "logprobs": True, "top_logprobs": 2},
        "n": 2,
    }
    reply = dapr.invoke("inference", "generate", body)
    assert len(reply["choices"]) == 2 and reply["finish_reason"] == "tool_calls"
    for choice in reply["choices"]:
        jsonschema.validate(
            json.loads(choice["tool_calls"][0]["function"]["arguments"]), ARGS_SCHEMA
        )
        assert choice["logprobs"]
    payload = {
        "prompt": "Answer:",
        "structured_outputs": {"choice": ["yes", "no"]},
        "sampling": {"max_tokens": 8},
    }
    token = mesh.gateway.dapr_headers["dapr-api-token"]
    frames = list(
        stream_generate(payload, grpc_port=mesh.gateway.ports.grpc, timeout=60, api_token=token)
    )
    assert frames[-1]["result"]["text"] in ("yes", "no")
    request_id = f"agent-{time.time_ns()}"
    request = {
        "prompt": "x",
        "structured_outputs": {"regex": "[a-z]{3}"},
        "sampling": {"logprobs": True},
        "n": 2,
    }
    event = {"request_id": request_id, "request": request}
    dapr.publish("inference.requests", event)
    results = mesh.backing.redis_client()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [
            e["data"]
            for _, fields in results.xrange("inference.results")
            if isinstance((e := json.loads(fields[b"data"]))["data"], dict)
            and e["data"]["request_id"] == request_id
        ]
        if found:
            choices = found[0]["result"]["choices"]
            assert len(choices) == 2 and all(len(c["text"]) == 3 for c in choices)
            return
        time.sleep(0.2)
    pytest.fail("no pub/sub result")


CONVERSATION = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: autoglm
spec:
  type: conversation.openai
  version: v1
  metadata:
    - name: endpoint
      value: "{endpoint}"
    - name: model
      value: demo-glm
    - name: key
      value: "{key}"
"""


def test_dapr_conversation_alpha2_with_a_tool(
    mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any Dapr app (Dapr Agents included) uses AutoGLM Mesh as its LLM through the
    Conversation API: a conversation.openai component whose endpoint is the gateway."""
    from dapr.clients import DaprClient
    from dapr.clients.grpc import conversation as conv
    from dapr.clients.grpc.interceptors import DaprClientInterceptor
    from dapr.conf import settings as dapr_settings

    resources = tmp_path / "resources"
    resources.mkdir()
    key = mesh.headers()["Authorization"].removeprefix("Bearer ")
    (resources / "conversation.yaml").write_text(
        textwrap.dedent(CONVERSATION).format(endpoint=f"{mesh.gateway_url}/v1", key=key)
    )
    ports = SidecarPorts.allocate()
    with ExitStack() as stack:
        sidecar = start_daprd(
            "agent-app",
            resources=resources,
            config=mesh.backing.config,
            log_path=mesh.backing.workdir / "logs" / "daprd-agent-app.log",
            ports=ports,
            secrets=mesh.backing.creds,
            sentry=mesh.backing.sentry,
        )
        stack.callback(sidecar.stop)
        # The SDK waits for its sidecar's HTTP health before the first call.
        monkeypatch.setattr(dapr_settings, "DAPR_HTTP_PORT", ports.http)
        token = mesh.backing.creds.dapr_token("agent-app")
        monkeypatch.setattr(dapr_settings, "DAPR_API_TOKEN", token)
        tool = conv.ConversationTools(
            function=conv.ConversationToolsFunction(
                name="get_weather",
                description="Current weather in a city",
                parameters=ARGS_SCHEMA,
            )
        )
        sends = [DaprClientInterceptor([("dapr-api-token", token)])]
        with DaprClient(address=f"127.0.0.1:{ports.grpc}", interceptors=sends) as dapr:
            reply = dapr.converse_alpha2(
                name="autoglm",
                inputs=[
                    conv.ConversationInputAlpha2(
                        messages=[conv.create_user_message("What is the weather in Oslo?")]
                    )
                ],
                tools=[tool],
                tool_choice="required",
            )
            choice = reply.outputs[0].choices[0]
            assert choice.finish_reason == "tool_calls"
            calls = choice.message.tool_calls
            assert calls and calls[0].function.name == "get_weather"
            jsonschema.validate(json.loads(calls[0].function.arguments), ARGS_SCHEMA)
            # The tool loop continues through the same API: the result goes back in.
            follow = dapr.converse_alpha2(
                name="autoglm",
                inputs=[
                    conv.ConversationInputAlpha2(
                        messages=[
                            conv.create_user_message("What is the weather in Oslo?"),
                            conv.ConversationMessage(
                                of_assistant=conv.ConversationMessageOfAssistant(
                                    tool_calls=list(calls)
                                )
                            ),
                            conv.create_tool_message(
                                tool_id=calls[0].id, name="get_weather", content="sunny, 18C"
                            ),
                        ]
                    )
                ],
                tools=[tool],
            )
            assert follow.outputs[0].choices[0].message.content is not None
