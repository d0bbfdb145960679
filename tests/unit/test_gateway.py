"""Gateway HTTP surface against a fake sidecar: OpenAI shapes, errors, auth, limits."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from flask.testing import FlaskClient
from gunicorn.config import Config

from autoglm.core.errors import (
    ConflictError,
    DeadlineExceededError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from autoglm.gateway import worker
from autoglm.gateway.app import GatewayFlask, create_app
from autoglm.gateway.settings import GatewaySettings
from autoglm.gateway.worker import GatewayResponse, SettledConfig
from tests.support.fakes import FakeSidecar
from tests.support.polling import wait_for
from tests.support.tokens import bearer
from tests.unit.gateway_fixtures import (
    CHAT,
    FROM_DAPRD,
    USER,
    FakeStream,
    _result,
    _sse,
    client,
    make_client,
    sidecar,
    stream,
)

__all__ = ["client", "sidecar", "stream"]  # fixtures used by name


# -- chat ---------------------------------------------------------------------------
def test_chat_completion_has_openai_shape(client: FlaskClient, sidecar: FakeSidecar) -> None:
    resp = client.post("/v1/chat/completions", json=dict(CHAT, n=2, seed=1), headers=USER)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] == "hello"
    assert "tool_calls" not in message and body["choices"][0]["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17}
    # One generation group of n choices, seeded once (the engine seeds choice i seed + i).
    calls = [p for _, m, p in sidecar.invocations if m == "generate"]
    assert [(p["n"], p["sampling"]["seed"]) for p in calls] == [(2, 1)]


def test_chat_stream_is_sse_ending_in_done(client: FlaskClient, stream: FakeStream) -> None:
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    resp = client.post("/v1/chat/completions", json=body, headers=USER)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    events = _sse(resp)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello world"
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == "stop" and set(finals[:-1]) == {None}
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert len({c["id"] for c in chunks}) == 1 and stream.closed == 1


def test_stream_failure_before_first_token_keeps_http_status(
    client: FlaskClient, stream: FakeStream
) -> None:
    stream.error = NotFoundError("model 'x' not found", code="model_not_found")
    resp = client.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers=USER)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (dict(CHAT, temperature=5), "temperature"),
        (dict(CHAT, messages=[]), "messages"),
        (dict(CHAT, messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (dict(CHAT, bogus=1), "bogus"),
        (dict(CHAT, n=99), "n"),
        (dict(CHAT, max_tokens=10**6), "max_tokens"),
        (dict(CHAT, n=2, stream=True), "n"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    client: FlaskClient, body: dict[str, Any], param: str
) -> None:
    resp = client.post("/v1/chat/completions", json=body, headers=USER)
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "field", [{"prediction": {"type": "content", "content": "x"}}, {"audio": {}}, {"store": True}]
)
def test_unimplemented_openai_field_is_refused_by_name(
    client: FlaskClient, field: dict[str, Any]
) -> None:
    resp = client.post("/v1/chat/completions", json={**CHAT, **field}, headers=USER)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["param"] == next(iter(field))


def test_penalties_and_label_fields_reach_the_engine(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    body = dict(
        CHAT,
        presence_penalty=1,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        logit_bias={"7": -100},
        min_tokens=2,
        stop_token_ids=[9],
        ignore_eos=True,
        metadata={"team": "a"},
        store=False,
        service_tier="auto",
        user="u1",
    )
    resp = client.post("/v1/chat/completions", json=body, headers=USER)
    assert resp.status_code == 200, resp.get_json()
    sampling = next(p for _, m, p in sidecar.invocations if m == "generate")["sampling"]
    assert sampling["presence_penalty"] == 1 and sampling["frequency_penalty"] == -0.5
    assert sampling["repetition_penalty"] == 1.2 and sampling["logit_bias"] == {"7": -100}
    assert sampling["min_tokens"] == 2 and sampling["stop_token_ids"] == [9]
    assert sampling["ignore_eos"] is True


def test_invalid_json_is_400(client: FlaskClient) -> None:
    resp = client.post(
        "/v1/chat/completions", data=b"{", content_type="application/json", headers=USER
    )
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_json"


def test_oversized_body_is_413(client: FlaskClient) -> None:
    resp = client.post(
        "/v1/chat/completions",
        data=b"x" * 10_000,
        content_type="application/json",
        headers=USER,
    )
    assert resp.status_code == 413 and "error" in resp.get_json()


def _chunked(client: FlaskClient, body: bytes) -> Any:
    """A body without Content-Length from a server that ends the stream (gunicorn)."""
    return client.post(
        "/v1/chat/completions",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers=USER,
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunked_body_over_the_limit_is_413_not_truncated(client: FlaskClient) -> None:
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "a" * 8000}]})
    resp = _chunked(client, body.encode())
    assert resp.status_code == 413, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "payload_too_large"


def test_chunked_body_within_the_limit_is_served(client: FlaskClient) -> None:
    resp = _chunked(client, json.dumps(CHAT).encode())
    assert resp.status_code == 200, resp.get_data(as_text=True)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "demo-glm", "messages": [{"role": "user", "content": "\\ud800 x"}]}',
        b'{"model": "demo-glm", "\\udfff": 1, "messages": []}',
    ],
    ids=["value", "key"],
)
def test_lone_surrogate_is_400_naming_the_field(client: FlaskClient, body: bytes) -> None:
    resp = client.post(
        "/v1/chat/completions", data=body, content_type="application/json", headers=USER
    )
    assert resp.status_code == 400, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_unicode" and "surrogate" in error["message"]


def test_paired_surrogates_are_ordinary_text(client: FlaskClient, sidecar: FakeSidecar) -> None:
    body = b'{"model": "demo-glm", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    resp = client.post(
        "/v1/chat/completions", data=body, content_type="application/json", headers=USER
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert sidecar.invocations[-1][2]["messages"][0]["content"] == "\U0001f600"


def test_unsafe_request_id_is_replaced(client: FlaskClient) -> None:
    resp = client.get("/v1/models", headers=dict(USER, **{"x-request-id": "a b\tc" * 40}))
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["x-request-id"])


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnavailableError("inference down"), 503),
        (OverloadedError("queue full"), 503),
        (DeadlineExceededError("too slow"), 504),
    ],
)
def test_upstream_errors_keep_their_status(
    client: FlaskClient, sidecar: FakeSidecar, error: Exception, status: int
) -> None:
    sidecar.invoke_replies["generate"] = error
    resp = client.post("/v1/chat/completions", json=CHAT, headers=USER)
    assert resp.status_code == status
    assert resp.get_json()["error"]["message"] == str(error)


def test_unexpected_exception_is_generic_500(client: FlaskClient, sidecar: FakeSidecar) -> None:
    def boom(_p: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("/secret/path leaked?")

    sidecar.invoke_replies["generate"] = boom
    headers = dict(USER, **{"x-request-id": "rid-1"})
    resp = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status_code == 500
    assert "/secret/path" not in resp.get_data(as_text=True)
    assert "rid-1" in resp.get_json()["error"]["message"]
    assert resp.headers["x-request-id"] == "rid-1"


def test_unknown_route_is_openai_404(client: FlaskClient) -> None:
    resp = client.get("/v1/nope", headers=USER)
    assert resp.status_code == 404 and resp.get_json()["error"]["type"] == "not_found_error"


def test_readyz_reports_failing_dependency(client: FlaskClient, sidecar: FakeSidecar) -> None:
    assert client.get("/readyz").status_code == 200
    sidecar.fail_state = ConflictError("weird")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["statestore"] == "weird"


# -- auth and rbac ------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}],
)
def test_every_api_route_needs_credentials(client: FlaskClient, headers: dict[str, str]) -> None:
    for method, path in [
        ("post", "/v1/chat/completions"),
        ("get", "/v1/models"),
        ("post", "/v1/sessions"),
        ("get", "/v1/jobs/job-1"),
        ("get", "/v1/attachments/a1"),
    ]:
        resp = getattr(client, method)(path, json={}, headers=headers)
        assert resp.status_code == 401, path
        assert resp.get_json()["error"]["type"] == "authentication_error"


def test_model_admin_needs_admin_role(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["load_model"] = {"model": "demo-glm", "state": "ready"}
    assert client.post("/v1/models/demo-glm/load", headers=USER).status_code == 403
    resp = client.post("/v1/models/demo-glm/load", headers=bearer("ops", "admin"))
    assert resp.status_code == 200 and resp.get_json()["state"] == "ready"
    assert ("inference", "load_model", {"model": "demo-glm"}) in sidecar.invocations


def test_dapr_callbacks_need_the_app_token_when_set(
    sidecar: FakeSidecar, stream: FakeStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_API_TOKEN", "s3cret")
    client = make_client(sidecar, stream)
    assert client.get("/dapr/subscribe").status_code == 401
    assert client.get("/dapr/subscribe", headers={"dapr-api-token": "s3cret"}).status_code == 200


def test_a_forged_job_result_without_the_app_token_is_refused(
    sidecar: FakeSidecar, stream: FakeStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local process posting a result to the gateway's delivery route (as daprd would)
    cannot complete a job: neither without the token nor when none is configured."""
    client = make_client(sidecar, stream)
    job = client.post("/v1/jobs", json=CHAT, headers=USER).get_json()
    request_id = f"acme:{job['id']}"
    forged = {"data": {"request_id": request_id, "result": {**_forged(request_id)}}}
    for headers in ({}, {"dapr-api-token": "guess"}):
        resp = client.post("/dapr/events/inference-results", json=forged, headers=headers)
        assert resp.status_code == 401
    assert client.get(f"/v1/jobs/{job['id']}", headers=USER).get_json()["status"] == "queued"
    # No token configured: callbacks are refused, never open.
    monkeypatch.delenv("APP_API_TOKEN", raising=False)
    open_gateway = create_app(GatewaySettings(), sidecar, stream_fn=stream).test_client()
    assert open_gateway.get("/dapr/subscribe").status_code == 401
    assert open_gateway.get("/dapr/subscribe", headers={"dapr-api-token": ""}).status_code == 401


def _forged(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "model": "demo-glm",
        "text": "forged",
        "finish_reason": "stop",
        "prompt_tokens": 1,
        "completion_tokens": 1,
    }


# -- other OpenAI endpoints -----------------------------------------------------------
def test_models_list_and_get(client: FlaskClient) -> None:
    listing = client.get("/v1/models", headers=USER).get_json()
    assert listing["object"] == "list" and listing["data"][0]["id"] == "demo-glm"
    assert client.get("/v1/models/demo-glm", headers=USER).get_json()["object"] == "model"
    resp = client.get("/v1/models/other", headers=USER)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "model_not_found"


def test_embeddings_float_and_base64(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["embed"] = lambda p: {
        "model": "mini",
        "data": [[0.5, -1.0] for _ in p["input"]],
        "prompt_tokens": 4,
    }
    body = {"model": "mini", "input": ["a", "b"]}
    plain = client.post("/v1/embeddings", json=body, headers=USER).get_json()
    assert [d["index"] for d in plain["data"]] == [0, 1]
    assert plain["data"][0]["embedding"] == [0.5, -1.0] and plain["usage"]["prompt_tokens"] == 4
    packed = client.post(
        "/v1/embeddings", json=dict(body, encoding_format="base64"), headers=USER
    ).get_json()
    raw = base64.b64decode(packed["data"][1]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.0)


def test_completions_batch_and_stream(client: FlaskClient, sidecar: FakeSidecar) -> None:
    body = {"model": "demo-glm", "prompt": ["a", "b"], "max_tokens": 4}
    resp = client.post("/v1/completions", json=body, headers=USER).get_json()
    assert resp["object"] == "text_completion" and [c["index"] for c in resp["choices"]] == [0, 1]
    assert resp["usage"]["prompt_tokens"] == 14
    prompts = [p["prompt"] for _, m, p in sidecar.invocations if m == "generate"]
    assert prompts == ["a", "b"]
    streamed = client.post(
        "/v1/completions", json={"model": "demo-glm", "prompt": "a", "stream": True}, headers=USER
    )
    events = _sse(streamed)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Hello world"


def test_the_tenant_travels_with_every_generate_request(
    client: FlaskClient, sidecar: FakeSidecar, stream: FakeStream
) -> None:
    """The engine schedules tenants fairly: invocation, stream and pub/sub all carry it."""
    client.post("/v1/chat/completions", json=CHAT, headers=USER)
    client.post("/v1/completions", json={"model": "demo-glm", "prompt": "a"}, headers=USER)
    _sse(client.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers=USER))
    body = {"model": "demo-glm", "prompt": "a", "stream": True}
    _sse(client.post("/v1/completions", json=body, headers=USER))
    assert client.post("/v1/jobs", json=CHAT, headers=USER).status_code == 202
    invoked = [p["tenant"] for _, m, p in sidecar.invocations if m == "generate"]
    streamed = [p["tenant"] for p in stream.payloads]
    published = [e["request"]["tenant"] for t, e in sidecar.published if t == "inference.requests"]
    assert invoked == ["acme", "acme"] and streamed == ["acme", "acme"]
    assert published == ["acme"]


# -- content filter -------------------------------------------------------------------
def test_content_filter_blocks_input_and_cuts_output(
    sidecar: FakeSidecar, stream: FakeStream
) -> None:
    client = make_client(sidecar, stream, blocked_terms=["forbidden", "world"])
    bad = dict(CHAT, messages=[{"role": "user", "content": "say FORBIDDEN things"}])
    resp = client.post("/v1/chat/completions", json=bad, headers=USER)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "content_filter"

    sidecar.invoke_replies["generate"] = lambda p: _result(p, "hello world again")
    choice = client.post("/v1/chat/completions", json=CHAT, headers=USER).get_json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert "world" not in choice["message"]["content"]

    events = _sse(client.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers=USER))
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert "world" not in text and events[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert stream.closed == 1  # generation cancelled upstream


def test_blocked_term_split_across_deltas_is_never_half_sent(
    sidecar: FakeSidecar, stream: FakeStream
) -> None:
    client = make_client(sidecar, stream, blocked_terms=["secretword"])
    stream.deltas = ["here is the sec", "retw", "ord and more"]
    events = _sse(client.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers=USER))
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "here is the " and "sec" not in text
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"


# -- response cache and rate limits -----------------------------------------------------
def test_deterministic_requests_are_cached_when_enabled(
    sidecar: FakeSidecar, stream: FakeStream
) -> None:
    client = make_client(sidecar, stream, response_cache_enabled=True)
    body = dict(CHAT, temperature=0, seed=3)
    first = client.post("/v1/chat/completions", json=body, headers=USER)
    second = client.post("/v1/chat/completions", json=body, headers=USER)
    assert first.headers["x-autoglm-cache"] == "miss" and second.headers["x-autoglm-cache"] == "hit"
    assert first.get_json() == second.get_json()
    assert sum(1 for _, m, _ in sidecar.invocations if m == "generate") == 1
    sampled = client.post("/v1/chat/completions", json=dict(CHAT, temperature=0.7), headers=USER)
    assert sampled.headers["x-autoglm-cache"] == "miss"


def test_rate_limit_is_429_with_retry_after(sidecar: FakeSidecar, stream: FakeStream) -> None:
    client = make_client(sidecar, stream, rate_limit_requests_per_min=2)
    codes = [client.get("/v1/models", headers=USER).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    resp = client.get("/v1/models", headers=USER)
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.get_json()["error"]["code"] == "rate_limited"
    # Another tenant has its own budget.
    assert client.get("/v1/models", headers=bearer("other")).status_code == 200


# -- audit and openapi ------------------------------------------------------------------
def test_one_audit_event_per_request_with_pii_masked(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    client.get("/v1/sessions/jane.doe@example.com", headers=USER)
    client.get("/healthz")
    audits = [p for t, p in sidecar.published if t == "audit"]
    assert len(audits) == 1
    event = audits[0]
    assert event["tenant"] == "acme" and event["role"] == "user" and event["status"] == 404
    assert "jane.doe@example.com" not in event["resource"]
    assert event["action"] == "GET /v1/sessions/<session_id>"


def test_a_json_reply_keeps_openais_key_order_and_sends_utf8(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sidecar.invoke_replies["generate"] = lambda p: _result(p, text="café")
    resp = client.post("/v1/chat/completions", json=CHAT, headers=USER)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert list(resp.get_json())[:4] == ["id", "object", "created", "model"]
    assert "café".encode() in resp.get_data()


def test_the_audit_event_is_queued_once_the_reply_is_closed(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    """Not while the reply is still being written (the client would wait for it), and
    in the request's trace although its span has ended by then."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {**USER, "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    # Flask's own test client does not close the reply: a server still writing it.
    writing = FlaskClient(client.application)
    resp = writing.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["choices"]
    assert not [p for t, p in sidecar.published if t == "audit"]
    resp.close()
    (event,) = [p for t, p in sidecar.published if t == "audit"]
    assert event["status"] == 200 and event["action"] == "POST /v1/chat/completions"
    assert event["trace_id"] == trace_id and event["model"] == "demo-glm"


def test_openapi_describes_every_route(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").get_json()
    rules = {
        r.rule.replace("<", "{").replace(">", "}")
        for r in client.application.url_map.iter_rules()
        if r.rule.startswith("/v1/") or r.rule in ("/healthz", "/readyz")
    }
    assert rules <= set(doc["paths"])
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert "429" in chat["responses"] and "requestBody" in chat


# -- token budgets: streams and jobs are charged too ---------------------------------------
def _tokens_charged(sidecar: FakeSidecar, tenant: str = "acme") -> int:
    prefix = f"ratelimit:{tenant}:tokens:"
    return sum(int(value) for key, (value, _) in sidecar.state.items() if key.startswith(prefix))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", dict(CHAT, stream=True)),
        ("/v1/completions", {"model": "demo-glm", "prompt": "a", "stream": True}),
    ],
    ids=["chat", "completions"],
)
def test_streamed_tokens_are_charged_once_and_exhaust_the_budget(
    sidecar: FakeSidecar, stream: FakeStream, path: str, body: dict[str, Any]
) -> None:
    client = make_client(sidecar, stream, rate_limit_tokens_per_min=6)
    resp = client.post(path, json=body, headers=USER)
    assert _sse(resp)[-1] == "[DONE]"
    # The engine's usage (3 prompt + 3 completion), charged by the stream alone.
    assert _tokens_charged(sidecar) == 6
    refused = client.get("/v1/models", headers=USER)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["details"]["limit"] == "tokens"
    assert client.get("/v1/models", headers=bearer("other")).status_code == 200


def test_stream_left_mid_way_charges_what_was_generated(
    sidecar: FakeSidecar, stream: FakeStream
) -> None:
    client = make_client(sidecar, stream, rate_limit_tokens_per_min=1000)
    stream.deltas = ["a", "b", "c", "d", "e"]
    resp = client.post(
        "/v1/chat/completions", json=dict(CHAT, stream=True), headers=USER, buffered=False
    )
    body = iter(resp.response)
    events = [next(body) for _ in range(3)]  # the role chunk, then two deltas
    assert b'"content":"b"' in events[-1]
    resp.close()  # the client goes away
    assert stream.closed == 1  # generation cancelled upstream
    assert _tokens_charged(sidecar) == 2  # two deltas received, no result yet


def test_non_streamed_reply_is_charged_once(sidecar: FakeSidecar, stream: FakeStream) -> None:
    client = make_client(sidecar, stream, rate_limit_tokens_per_min=1000)
    assert client.post("/v1/chat/completions", json=CHAT, headers=USER).status_code == 200
    assert _tokens_charged(sidecar) == 12  # 7 prompt + 5 completion, from the JSON usage


def test_job_tokens_are_charged_when_stored_and_exhaust_the_budget(
    sidecar: FakeSidecar, stream: FakeStream
) -> None:
    client = make_client(sidecar, stream, rate_limit_tokens_per_min=12)
    job = client.post("/v1/jobs", json=CHAT, headers=USER).get_json()
    request_id = f"acme:{job['id']}"
    envelope = {"data": {"request_id": request_id, "result": _result({"request_id": request_id})}}
    sidecar.fail_state = UnavailableError("store down")
    retry = client.post(
        "/dapr/events/inference-results", json=envelope, headers=FROM_DAPRD
    ).get_json()
    assert retry == {"status": "RETRY"} and _tokens_charged(sidecar) == 0  # not stored yet
    sidecar.fail_state = None
    for _ in range(2):  # the redelivery stores it; a duplicate is not charged again
        ack = client.post(
            "/dapr/events/inference-results", json=envelope, headers=FROM_DAPRD
        ).get_json()
        assert ack == {"status": "SUCCESS"}
    assert _tokens_charged(sidecar) == 12
    assert client.get(f"/v1/jobs/{job['id']}", headers=USER).status_code == 429


def test_the_worker_reads_each_gunicorn_setting_once() -> None:
    cfg = Config()
    cfg.set("keepalive", 7)
    settled = SettledConfig(cfg)
    assert settled.keepalive == 7 and settled.forwarder_headers == cfg.forwarder_headers
    assert settled.limit_request_fields == cfg.limit_request_fields
    with mock.patch.object(Config, "__getattr__", side_effect=AssertionError("read again")):
        assert settled.keepalive == 7 and settled.limit_request_fields == 100
    with pytest.raises(AttributeError):
        settled.no_such_setting  # noqa: B018


class _Sent:
    """A connection that records each ``sendall``."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.calls.append(bytes(data))


def _respond(
    cls: type, headers: list[tuple[str, str]], body: list[bytes], method: str = "GET"
) -> list[bytes]:
    """What gunicorn's worker does with a response: start it, write each item, close."""
    from types import SimpleNamespace

    req = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False)
    sock = _Sent()
    resp = cls(req, sock, Config())
    resp.start_response("200 OK", headers)
    for item in body:
        resp.write(item)
    resp.close()
    return sock.calls


@pytest.fixture
def fixed_date() -> Iterator[None]:
    with (
        mock.patch("gunicorn.util.http_date", return_value="Tue, 01 Dec 2026 10:00:00 GMT"),
        mock.patch.object(worker, "http_date", return_value="Tue, 01 Dec 2026 10:00:00 GMT"),
    ):
        yield


@pytest.mark.usefixtures("fixed_date")
def test_a_reply_of_known_length_leaves_in_one_send_with_gunicorns_bytes() -> None:
    from gunicorn.http.wsgi import Response

    headers = [("Content-Type", "application/json"), ("Content-Length", "11")]
    ours = _respond(GatewayResponse, headers, [b'{"ok": true}'[:11]])
    assert len(ours) == 1 and ours[0].endswith(b'{"ok": true')
    assert ours == [b"".join(_respond(Response, headers, [b'{"ok": true}'[:11]]))]
    # A HEAD's head still goes out (at the close), without the body.
    (head,) = _respond(GatewayResponse, headers, [b'{"ok": true'], method="HEAD")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    # Several items: the head rides with the first; gunicorn's length cap still holds.
    parts = _respond(GatewayResponse, headers, [b"0123456", b"789", b"abcdef"])
    assert parts[0].endswith(b"\r\n\r\n0123456") and parts[1:] == [b"789", b"a"]


@pytest.mark.usefixtures("fixed_date")
def test_a_stream_sends_its_head_at_once() -> None:
    """Chunked (an SSE stream): the head leaves before the first event, as gunicorn does."""
    from gunicorn.http.wsgi import Response

    headers = [("Content-Type", "text/event-stream")]
    ours = _respond(GatewayResponse, headers, [b"data: 1\n\n", b"data: 2\n\n"])
    assert ours[0].endswith(b"Content-Type: text/event-stream\r\n\r\n") and len(ours) >= 3
    assert b"Transfer-Encoding: chunked\r\n" in ours[0]
    assert ours == _respond(Response, headers, [b"data: 1\n\n", b"data: 2\n\n"])


def test_the_date_header_is_gunicorns_formatted_once_a_second() -> None:
    from gunicorn import util

    now = 1_764_669_600.4
    expected = util.http_date(int(now))
    with mock.patch("time.time", return_value=now):
        assert worker.http_date() == expected
        with mock.patch("email.utils.formatdate", side_effect=AssertionError("again")):
            assert worker.http_date() == expected


def test_the_static_part_of_the_environ_is_built_once_per_worker() -> None:
    from gunicorn.http import wsgi

    cfg = SettledConfig(Config())
    with mock.patch.object(wsgi, "WSGIErrorsWrapper", wraps=wsgi.WSGIErrorsWrapper) as wrapper:
        first, second = worker.settled_base_environ(cfg), worker.settled_base_environ(cfg)
    assert wrapper.call_count == 1 and first == second and first is not second
    assert first.keys() == worker._base_environ(Config()).keys()


def test_the_gateway_opens_no_cookie_session_and_checks_each_function_once(
    client: FlaskClient,
) -> None:
    app = client.application
    assert isinstance(app, GatewayFlask)
    assert client.get("/healthz").status_code == 200
    with app.test_request_context("/healthz"):
        from flask import session

        shared = app.session_interface.open_session(app, None)  # type: ignore[arg-type]
        assert session._get_current_object() is shared  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError):
            session["x"] = 1  # read-only, as Flask's null session without a secret key

    def view() -> str:
        return "x"

    with mock.patch("flask.app.iscoroutinefunction", wraps=lambda f: False) as check:
        assert app.ensure_sync(view) is view and app.ensure_sync(view) is view
    assert check.call_count == 1


# -- graceful drain ---------------------------------------------------------------------------
_GATEWAY = """
import sys
from autoglm.gateway.__main__ import GatewayServer
from autoglm.gateway.settings import GatewaySettings

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"served"]

class Tiny(GatewayServer):  # the real server, arbiter and hooks; a trivial app
    def load(self):
        return hello

Tiny(GatewaySettings(port=int(sys.argv[1]), workers=1)).run()
"""


def test_sigint_drains_like_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Own process group, signalled as a whole: what Ctrl-C does (master and workers).
    proc = subprocess.Popen([sys.executable, "-c", _GATEWAY, str(port)], start_new_session=True)
    try:

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), 1)

        with wait_for(
            "the gateway listening", connect, 20, every=0.05, transient=(OSError,)
        ) as conn:
            conn.settimeout(10)
            request = b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n"
            conn.sendall(request)
            first = b""
            while not first.endswith(b"served"):  # the whole first reply, body included
                chunk = conn.recv(4096)
                assert chunk, first
                first += chunk
            assert first.startswith(b"HTTP/1.1 200")
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.3)  # the workers are stopping now
            # A request already under way on a kept-alive connection is still answered
            # (and the connection closed); gunicorn's quick SIGINT stop drops it unread.
            conn.sendall(request)
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"served")
        assert b"Connection: close" in reply
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_blocked_term_longer_than_the_default_holdback_is_never_half_sent(
    sidecar: FakeSidecar, stream: FakeStream
) -> None:
    term = "the launch codes are " + "x" * 80
    client = make_client(sidecar, stream, blocked_terms=[term])
    stream.deltas = ["fine. ", term[:50], term[50:], " after"]
    events = _sse(client.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers=USER))
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "fine. " and events[-2]["choices"][0]["finish_reason"] == "content_filter"


def test_a_streams_audit_event_is_published_when_it_ends(
    client: FlaskClient, sidecar: FakeSidecar, stream: FakeStream
) -> None:
    """The event of an SSE response covers the whole stream, not its first bytes."""
    slow = ["a", "b", "c"]

    def deltas() -> Iterator[dict[str, Any]]:
        for d in slow:
            time.sleep(0.05)
            yield {"delta": d}
        yield {"result": {**_result({"request_id": "r"}), "text": "abc"}}

    stream._run = deltas  # type: ignore[method-assign]
    resp = client.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers=USER)
    assert not [p for t, p in sidecar.published if t == "audit"]  # not at the headers
    body = resp.get_data(as_text=True)
    resp.close()
    assert "[DONE]" in body
    (event,) = [p for t, p in sidecar.published if t == "audit"]
    assert event["status"] == 200 and event["latency_ms"] >= 100
