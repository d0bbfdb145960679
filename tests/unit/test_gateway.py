from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from autoglm.core.errors import ConflictError, UnavailableError
from autoglm.gateway.app import create_app
from autoglm.gateway.settings import GatewaySettings
from tests.support.fakes import FakeSidecar

CHAT = {"model": "demo-glm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def _result(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": payload["request_id"],
        "model": "demo-glm",
        "text": "hello",
        "finish_reason": "length",
        "prompt_tokens": 7,
        "completion_tokens": 5,
    }


@pytest.fixture
def sidecar() -> FakeSidecar:
    fake = FakeSidecar()
    fake.invoke_replies["generate"] = _result
    fake.invoke_replies["models"] = {"data": []}
    return fake


@pytest.fixture
def client(sidecar: FakeSidecar) -> FlaskClient:
    settings = GatewaySettings(max_body_bytes=4096)
    return create_app(settings, sidecar).test_client()


def test_chat_completion_has_openai_shape(client: FlaskClient, sidecar: FakeSidecar) -> None:
    resp = client.post("/v1/chat/completions", json=dict(CHAT, n=2, seed=1))
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17}
    seeds = [p["sampling"]["seed"] for _, _, p in sidecar.invocations]
    assert seeds == [1, 2]
    assert sidecar.invocations[0][:2] == ("inference", "generate")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (dict(CHAT, temperature=5), "temperature"),
        (dict(CHAT, messages=[]), "messages"),
        (dict(CHAT, messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (dict(CHAT, bogus=1), "bogus"),
        (dict(CHAT, n=99), "n"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    client: FlaskClient, body: dict[str, Any], param: str
) -> None:
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_invalid_json_is_400(client: FlaskClient) -> None:
    resp = client.post("/v1/chat/completions", data=b"{", content_type="application/json")
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_json"


def test_oversized_body_is_413(client: FlaskClient) -> None:
    resp = client.post("/v1/chat/completions", data=b"x" * 10_000, content_type="application/json")
    assert resp.status_code == 413 and "error" in resp.get_json()


def test_upstream_errors_keep_their_status(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["generate"] = UnavailableError("inference down")
    resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 503
    assert resp.get_json()["error"]["message"] == "inference down"


def test_unexpected_exception_is_generic_500(client: FlaskClient, sidecar: FakeSidecar) -> None:
    def boom(_p: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("/secret/path leaked?")

    sidecar.invoke_replies["generate"] = boom
    resp = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "rid-1"})
    assert resp.status_code == 500
    assert "/secret/path" not in resp.get_data(as_text=True)
    assert "rid-1" in resp.get_json()["error"]["message"]
    assert resp.headers["x-request-id"] == "rid-1"


def test_unknown_route_is_openai_404(client: FlaskClient) -> None:
    resp = client.get("/v1/nope")
    assert resp.status_code == 404 and resp.get_json()["error"]["type"] == "not_found_error"


def test_readyz_reports_failing_dependency(client: FlaskClient, sidecar: FakeSidecar) -> None:
    assert client.get("/readyz").status_code == 200
    sidecar.fail_state = ConflictError("weird")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["statestore"] == "weird"
