"""The gateway's agent API against a fake inference: tool calls and log-probabilities in
OpenAI's shapes (whole and streamed), constraints and tools forwarded, bad ones refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support.fakes import FakeSidecar
from tests.unit.gateway_fixtures import CHAT, USER, FakeStream, _sse, make_client, sidecar

__all__ = ["sidecar"]  # fixture used by name

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
LP = {"token": "He", "logprob": -0.5, "bytes": [72, 101], "top_logprobs": []}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}


class AgentStream(FakeStream):
    def __init__(self, frames: list[dict[str, Any]]) -> None:
        super().__init__()
        self.frames = frames
        self.payloads: list[dict[str, Any]] = []

    def __call__(self, payload: dict[str, Any], app_id: str, timeout: float) -> Iterator[Any]:
        self.payloads.append(payload)
        return iter(self.frames)


def _done(**kw: Any) -> dict[str, Any]:
    base = {
        "request_id": "r",
        "model": "demo-glm",
        "text": "",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
    }
    return {"result": {**base, **kw}}


def _client(sidecar: FakeSidecar, frames: list[dict[str, Any]]) -> tuple[FlaskClient, AgentStream]:
    stream = AgentStream(frames)
    return make_client(sidecar, stream), stream


def test_tool_calls_reply(sidecar: FakeSidecar) -> None:
    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        assert payload["tools"][0]["function"]["name"] == "f"
        assert payload["tool_choice"] == "required" and payload["parallel_tool_calls"] is True
        return {**_done(tool_calls=[CALL], finish_reason="tool_calls")["result"]}

    sidecar.invoke_replies["generate"] = reply
    client, _ = _client(sidecar, [])
    body = dict(CHAT, tools=[TOOL], tool_choice="required")
    resp = client.post("/v1/chat/completions", json=body, headers=USER)
    assert resp.status_code == 200, resp.get_json()
    choice = resp.get_json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None and choice["message"]["tool_calls"] == [CALL]


def test_tool_history_is_accepted(sidecar: FakeSidecar) -> None:
    client, _ = _client(sidecar, [])
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "1"}]},
    ]
    resp = client.post(
        "/v1/chat/completions", json=dict(CHAT, messages=messages, tools=[TOOL]), headers=USER
    )
    assert resp.status_code == 200, resp.get_json()
    sent = next(p for _, m, p in sidecar.invocations if m == "generate")["messages"]
    assert sent[1]["tool_calls"][0]["function"]["name"] == "f" and sent[1]["content"] == ""
    assert sent[2] == {"role": "tool", "content": "1", "tool_call_id": "call_1"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, None),  # required without tools
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}}, None),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        ({"top_logprobs": 3}, None),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ],
)
def test_bad_agent_fields_are_400(
    sidecar: FakeSidecar, extra: dict[str, Any], param: str | None
) -> None:
    client, _ = _client(sidecar, [])
    resp = client.post("/v1/chat/completions", json={**CHAT, **extra}, headers=USER)
    assert resp.status_code == 400
    if param:
        assert resp.get_json()["error"]["param"] == param


def test_engine_refusal_of_a_schema_is_400(sidecar: FakeSidecar) -> None:
    from autoglm.core.errors import InvalidRequestError

    sidecar.invoke_replies["generate"] = InvalidRequestError(
        "invalid JSON schema at 'type'", param="response_format.json_schema.schema"
    )
    client, _ = _client(sidecar, [])
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    resp = client.post("/v1/chat/completions", json=dict(CHAT, response_format=fmt), headers=USER)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["param"] == "response_format.json_schema.schema"


def test_streamed_logprobs_and_tool_call_deltas(sidecar: FakeSidecar) -> None:
    frames = [
        {"delta": "He", "logprobs": [LP]},
        {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]},
        _done(tool_calls=[CALL], finish_reason="tool_calls"),
    ]
    client, stream = _client(sidecar, frames)
    body = dict(CHAT, stream=True, logprobs=True, top_logprobs=0, tools=[TOOL])
    events = _sse(client.post("/v1/chat/completions", json=body, headers=USER))
    assert events[-1] == "[DONE]"
    choices = [e["choices"][0] for e in events[:-1] if e["choices"]]
    assert choices[1]["delta"]["content"] == "He"
    assert choices[1]["logprobs"]["content"][0]["token"] == "He"
    calls = [c["delta"]["tool_calls"][0] for c in choices if c["delta"].get("tool_calls")]
    assert calls[0]["id"] == "call_1" and calls[1]["function"]["arguments"] == '{"a":1}'
    assert choices[-1]["finish_reason"] == "tool_calls"
    assert stream.payloads[0]["sampling"]["logprobs"] is True


def test_completions_logprobs_shape(sidecar: FakeSidecar) -> None:
    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        assert payload["sampling"]["top_logprobs"] == 2 and payload["n"] == 2
        lp = {**LP, "top_logprobs": [{"token": "He", "logprob": -0.5}]}
        choice = {"text": "He", "finish_reason": "length", "completion_tokens": 1, "logprobs": [lp]}
        return {
            **_done(text="He", finish_reason="length")["result"],
            "choices": [{**choice, "index": 0}, {**choice, "index": 1}],
        }

    sidecar.invoke_replies["generate"] = reply
    client, _ = _client(sidecar, [])
    body = {"model": "demo-glm", "prompt": "x", "max_tokens": 1, "logprobs": 2, "n": 2}
    resp = client.post("/v1/completions", json=body, headers=USER)
    assert resp.status_code == 200, resp.get_json()
    choices = resp.get_json()["choices"]
    assert len(choices) == 2
    assert choices[0]["logprobs"] == {
        "tokens": ["He"],
        "token_logprobs": [-0.5],
        "top_logprobs": [{"He": -0.5}],
        "text_offset": [0],
    }


def test_session_keeps_tool_calls_and_results(sidecar: FakeSidecar) -> None:
    """A turn that calls a tool is stored with its calls; the next turn sends the tool's
    result, and the engine gets the whole history."""
    sidecar.invoke_replies["generate"] = lambda p: _done(
        tool_calls=[CALL], finish_reason="tool_calls"
    )["result"]
    client, _ = _client(sidecar, [])
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    first = dict(CHAT, session_id=sid, tools=[TOOL], tool_choice="required")
    assert client.post("/v1/chat/completions", json=first, headers=USER).status_code == 200
    stored = client.get(f"/v1/sessions/{sid}", headers=USER).get_json()["messages"]
    assert stored[-1] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    sidecar.invoke_replies["generate"] = lambda p: _done(text="It is 1.")["result"]
    result = {"role": "tool", "tool_call_id": "call_1", "content": "1"}
    second = dict(CHAT, session_id=sid, tools=[TOOL], messages=[result])
    assert client.post("/v1/chat/completions", json=second, headers=USER).status_code == 200
    sent = [p for _, m, p in sidecar.invocations if m == "generate"][-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"] == [CALL]
    stored = client.get(f"/v1/sessions/{sid}", headers=USER).get_json()["messages"]
    assert stored[-2:] == [result, {"role": "assistant", "content": "It is 1."}]
