"""The Responses API against a fake sidecar and inference: conversions to and from the
chat core, stored records and chains, background completion and cancel, events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from autoglm.core.errors import InvalidRequestError, NotFoundError
from autoglm.core.schemas import REQUESTS_TOPIC, SNAPSHOTS_TOPIC, GenerateResult, ToolCall, parse
from autoglm.gateway.jobs.api_router import RESULTS_ROUTE
from autoglm.gateway.openai.responses.protocol import (
    ResponseObject,
    ResponsesRequest,
    replay_events,
    stored_input_items,
    to_messages,
)
from tests.support.fakes import FakeSidecar
from tests.support.tokens import bearer
from tests.unit.gateway_fixtures import (
    FROM_DAPRD,
    USER,
    FakeStream,
    _result,
    client,
    make_client,
    sidecar,
    stream,
)

__all__ = ["client", "sidecar", "stream"]  # fixtures used by name

TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


def _events(resp: Any) -> list[dict[str, Any]]:
    lines = resp.get_data(as_text=True).splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def _create(client: FlaskClient, **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/responses", json={"model": "demo-glm", **body}, headers=USER)
    assert resp.status_code == 200, resp.get_json()
    out: dict[str, Any] = resp.get_json()
    return out


# -- conversions ----------------------------------------------------------------------
def test_input_items_become_chat_turns() -> None:
    request = parse(
        ResponsesRequest,
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather "}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
        },
    )
    turns = to_messages(request.items())
    assert [t.role for t in turns] == ["user", "assistant", "tool"]
    assert [c.id for c in turns[1].tool_calls or []] == ["c1", "c2"]
    assert turns[2].tool_call_id == "c1" and turns[2].content == "sunny"
    items = stored_input_items(request.items())
    assert [i["type"] for i in items] == [
        "message",
        "function_call",
        "function_call",
        "function_call_output",
    ]
    assert all(i["id"] for i in items)


def test_tools_and_text_format_become_chat_fields() -> None:
    request = parse(
        ResponsesRequest,
        {
            "model": "m",
            "input": "hi",
            "tools": [TOOL],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "max_output_tokens": 9,
        },
    )
    body = request.to_chat_body(to_messages(request.items()))
    assert body["tools"][0] == {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert body["max_completion_tokens"] == 9


def test_replayed_events_are_numbered_and_ordered() -> None:
    request = parse(ResponsesRequest, {"model": "m", "input": "hi", "background": True})
    result = GenerateResult(
        request_id="r",
        model="m",
        text="Hello",
        finish_reason="tool_calls",
        prompt_tokens=3,
        completion_tokens=2,
        tool_calls=[ToolCall.model_validate(CALL)],
    )
    response = ResponseObject.start("resp_1", request, "queued").finish(result)
    events = replay_events(response)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "queued"
    assert events[-1]["response"]["output"][1]["call_id"] == "call_1"
    assert replay_events(response) == events  # the same on every read


# -- routes ---------------------------------------------------------------------------
def test_create_stores_and_archives_the_response(client: FlaskClient, sidecar: FakeSidecar) -> None:
    body = _create(client, input="Hello", metadata={"k": "v"}, max_output_tokens=5)
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "incomplete"  # the fake stops for length
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0] == {
        "type": "output_text",
        "text": "hello",
        "annotations": [],
        "logprobs": [],
    }
    assert body["usage"]["input_tokens"] == 7 and body["usage"]["total_tokens"] == 12
    assert body["metadata"] == {"k": "v"}
    assert f"response:acme:{body['id']}" in sidecar.state
    snap = [p for t, p in sidecar.published if t == SNAPSHOTS_TOPIC][-1]
    assert snap["session_id"] == body["id"] and snap["record"]["response"]["id"] == body["id"]
    assert [m["role"] for m in snap["messages"]] == ["user", "assistant"]
    got = client.get(f"/v1/responses/{body['id']}", headers=USER)
    assert got.get_json() == body
    other = client.get(f"/v1/responses/{body['id']}", headers=bearer("globex"))
    assert other.status_code == 404


def test_chain_sends_the_whole_conversation_from_one_read(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    first = _create(client, input="One", instructions="Be brief")
    second = _create(client, input="Two", previous_response_id=first["id"])
    _create(client, input="Three", previous_response_id=second["id"])
    prompts = [p["messages"] for _, m, p in sidecar.invocations if m == "generate"]
    assert [m["content"] for m in prompts[0]] == ["Be brief", "One"]
    # Instructions are not carried over; the conversation is.
    assert [m["content"] for m in prompts[2]] == ["One", "hello", "Two", "hello", "Three"]
    missing = client.post(
        "/v1/responses",
        json={"model": "demo-glm", "input": "x", "previous_response_id": "resp_nope"},
        headers=USER,
    )
    assert missing.status_code == 404


def test_store_false_keeps_nothing(client: FlaskClient, sidecar: FakeSidecar) -> None:
    body = _create(client, input="Hi", store=False)
    assert not any(k.startswith("response:") for k in sidecar.state)
    assert client.get(f"/v1/responses/{body['id']}", headers=USER).status_code == 404


def test_function_call_loop(client: FlaskClient, sidecar: FakeSidecar) -> None:
    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        if payload["messages"][-1]["role"] == "tool":
            return _result(payload, text="It is sunny")
        assert payload["tools"][0]["function"]["name"] == "get_weather"
        return {**_result(payload, text=""), "tool_calls": [CALL], "finish_reason": "tool_calls"}

    sidecar.invoke_replies["generate"] = reply
    first = _create(client, input="Weather?", tools=[TOOL], tool_choice="required")
    call = first["output"][0]
    assert call["type"] == "function_call" and call["call_id"] == "call_1"
    assert first["status"] == "completed"
    second = _create(
        client,
        previous_response_id=first["id"],
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
        tools=[TOOL],
    )
    assert second["output"][0]["content"][0]["text"] == "It is sunny"
    prompt = [p["messages"] for _, m, p in sidecar.invocations if m == "generate"][-1]
    assert prompt[1]["tool_calls"][0]["id"] == "call_1" and prompt[2]["tool_call_id"] == "call_1"


def test_truncation(client: FlaskClient, sidecar: FakeSidecar) -> None:
    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        if len(payload["messages"]) > 3:
            raise InvalidRequestError("too long", code="context_length_exceeded")
        return _result(payload)

    first = _create(client, input="One")
    second = _create(client, input="Two", previous_response_id=first["id"])
    sidecar.invoke_replies["generate"] = reply
    body = {"model": "demo-glm", "input": "Three", "previous_response_id": second["id"]}
    refused = client.post("/v1/responses", json=body, headers=USER)
    assert refused.status_code == 400 and refused.get_json()["error"]["param"] == "input"
    fitted = client.post("/v1/responses", json={**body, "truncation": "auto"}, headers=USER)
    assert fitted.status_code == 200, fitted.get_json()
    prompt = [p["messages"] for _, m, p in sidecar.invocations if m == "generate"][-1]
    assert [m["content"] for m in prompt] == ["Two", "hello", "Three"]


def test_streamed_events(sidecar: FakeSidecar) -> None:
    client = make_client(sidecar, FakeStream())
    resp = client.post(
        "/v1/responses", json={"model": "demo-glm", "input": "Hi", "stream": True}, headers=USER
    )
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = _events(resp)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert deltas == "Hello world" == final["output"][0]["content"][0]["text"]
    stored = client.get(f"/v1/responses/{final['id']}", headers=USER).get_json()
    assert stored["output"] == final["output"] and stored["status"] == "completed"


def test_streamed_function_call(sidecar: FakeSidecar) -> None:
    class Calls(FakeStream):
        def _run(self) -> Any:
            yield {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
            yield {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
            result = {**_result({"request_id": "r"}, text=""), "finish_reason": "tool_calls"}
            yield {"result": {**result, "tool_calls": [CALL]}}

    client = make_client(sidecar, Calls())
    body = {"model": "demo-glm", "input": "W?", "stream": True, "tools": [TOOL]}
    events = _events(client.post("/v1/responses", json=body, headers=USER))
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == "{}" and done["name"] == "get_weather"
    assert events[-1]["response"]["output"][0]["call_id"] == "call_1"


def _deliver(client: FlaskClient, sidecar: FakeSidecar, result: dict[str, Any] | None) -> str:
    request = [p for t, p in sidecar.published if t == REQUESTS_TOPIC][-1]
    event: dict[str, Any] = {"request_id": request["request_id"]}
    if result is None:
        event["error"] = {"message": "boom", "code": "internal_error"}
    else:
        event["result"] = {**result, "request_id": request["request_id"]}
    resp = client.post(RESULTS_ROUTE, json={"data": event}, headers=FROM_DAPRD)
    return str(resp.get_json()["status"])


def test_background_completes_once(client: FlaskClient, sidecar: FakeSidecar) -> None:
    queued = _create(client, input="Hi", background=True)
    assert queued["status"] == "queued" and queued["background"] is True
    request = [p for t, p in sidecar.published if t == REQUESTS_TOPIC][-1]
    assert request["request_id"] == f"acme:{queued['id']}"
    assert request["request"]["tenant"] == "acme"
    assert _deliver(client, sidecar, _result({"request_id": "r"}, text="done")) == "SUCCESS"
    got = client.get(f"/v1/responses/{queued['id']}", headers=USER).get_json()
    assert got["status"] == "incomplete" and got["output"][0]["content"][0]["text"] == "done"
    # A redelivery changes nothing.
    assert _deliver(client, sidecar, _result({"request_id": "r"}, text="again")) == "SUCCESS"
    again = client.get(f"/v1/responses/{queued['id']}", headers=USER).get_json()
    assert again == got
    events = _events(
        client.get(f"/v1/responses/{queued['id']}?stream=true&starting_after=3", headers=USER)
    )
    assert events[0]["sequence_number"] == 4 and events[-1]["type"] == "response.incomplete"


def test_background_failure_and_cancel(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["cancel"] = lambda p: {**p, "cancelled": True}
    failed = _create(client, input="Hi", background=True)
    _deliver(client, sidecar, None)
    got = client.get(f"/v1/responses/{failed['id']}", headers=USER).get_json()
    assert got["status"] == "failed" and got["error"]["message"] == "boom"

    queued = _create(client, input="Hi", background=True)
    resp = client.post(f"/v1/responses/{queued['id']}/cancel", headers=USER)
    assert resp.get_json()["status"] == "cancelled"
    assert ("inference", "cancel", {"request_id": f"acme:{queued['id']}"}) in sidecar.invocations
    _deliver(client, sidecar, _result({"request_id": "r"}))  # the late result is ignored
    assert (
        client.get(f"/v1/responses/{queued['id']}", headers=USER).get_json()["status"]
        == "cancelled"
    )

    sync = _create(client, input="Hi")
    refused = client.post(f"/v1/responses/{sync['id']}/cancel", headers=USER)
    assert refused.status_code == 400


def test_delete_reaches_the_archive(client: FlaskClient, sidecar: FakeSidecar) -> None:
    body = _create(client, input="Hi")
    resp = client.delete(f"/v1/responses/{body['id']}", headers=USER)
    assert resp.get_json() == {"id": body["id"], "object": "response", "deleted": True}
    deletion = [p for t, p in sidecar.published if t == SNAPSHOTS_TOPIC][-1]
    assert deletion["deleted"] is True and deletion["session_id"] == body["id"]
    assert client.get(f"/v1/responses/{body['id']}", headers=USER).status_code == 404


def test_restored_from_the_archive(client: FlaskClient, sidecar: FakeSidecar) -> None:
    body = _create(client, input="Hi")
    snap = [p for t, p in sidecar.published if t == SNAPSHOTS_TOPIC][-1]
    del sidecar.state[f"response:acme:{body['id']}"]
    sidecar.invoke_replies["restore"] = lambda p: {
        "tenant": p["tenant"],
        "session_id": p["session_id"],
        "version": snap["version"],
        "messages": snap["messages"],
        "record": snap["record"],
    }
    assert client.get(f"/v1/responses/{body['id']}", headers=USER).get_json() == body
    assert f"response:acme:{body['id']}" in sidecar.state  # written back
    sidecar.invoke_replies["restore"] = NotFoundError("none")
    assert client.get("/v1/responses/resp_other", headers=USER).status_code == 404


def test_input_items_pages(client: FlaskClient) -> None:
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    body = _create(client, input=items)
    url = f"/v1/responses/{body['id']}/input_items"
    page = client.get(f"{url}?limit=2&order=asc", headers=USER).get_json()
    assert [i["content"][0]["text"] for i in page["data"]] == ["m0", "m1"] and page["has_more"]
    rest = client.get(f"{url}?order=asc&after={page['last_id']}", headers=USER).get_json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["m2", "m3", "m4"]
    assert not rest["has_more"]
    newest = client.get(url, headers=USER).get_json()
    assert newest["data"][0]["content"][0]["text"] == "m4"


@pytest.mark.parametrize(
    "body",
    [
        {"input": "x", "background": True, "store": False},
        {"input": "x", "reasoning": {"effort": "low"}},
        {"input": "x", "include": ["message.output_text.logprobs"]},
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
        {"input": "x", "tool_choice": "required"},
        {"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}},
        {"input": []},
    ],
)
def test_bad_requests_are_400(client: FlaskClient, body: dict[str, Any]) -> None:
    resp = client.post("/v1/responses", json={"model": "demo-glm", **body}, headers=USER)
    assert resp.status_code == 400, resp.get_json()


def test_retrieving_does_not_charge_tokens_again(sidecar: FakeSidecar) -> None:
    client = make_client(sidecar, FakeStream(), rate_limit_tokens_per_min=13)
    body = _create(client, input="Hi")  # 12 tokens
    for _ in range(3):
        assert client.get(f"/v1/responses/{body['id']}", headers=USER).status_code == 200
    assert (
        client.post(
            "/v1/responses", json={"model": "demo-glm", "input": "x"}, headers=USER
        ).status_code
        == 200
    )


def test_content_filter_audit_and_isolation(sidecar: FakeSidecar) -> None:
    client = make_client(sidecar, FakeStream(), blocked_terms=["forbidden", "world"])
    refused = client.post(
        "/v1/responses",
        json={"model": "demo-glm", "input": [{"role": "user", "content": "a forbidden word"}]},
        headers=USER,
    )
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "content_filter"
    # Output is cut (the fake stream says "Hello world"), whole and streamed.
    body = {"model": "demo-glm", "input": "Hi", "stream": True}
    events = _events(client.post("/v1/responses", json=body, headers=USER))
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "content_filter"}
    assert "world" not in final["response"]["output"][0]["content"][0]["text"]
    sidecar.invoke_replies["generate"] = lambda p: _result(p, text="hello world")
    whole = _create(client, input="Hi")
    assert whole["incomplete_details"] == {"reason": "content_filter"}
    assert whole["output"][0]["content"][0]["text"] == "hello "
    audits = [p for t, p in sidecar.published if t == "audit"]
    assert [a["action"] for a in audits[-2:]] == ["POST /v1/responses"] * 2
    assert audits[-1]["tenant"] == "acme" and audits[-1]["model"] == "demo-glm"
    probe = client.delete(f"/v1/responses/{whole['id']}", headers=bearer("globex"))
    assert probe.status_code == 404
    assert client.get(f"/v1/responses/{whole['id']}", headers=USER).status_code == 200
