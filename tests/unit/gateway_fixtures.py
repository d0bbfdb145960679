"""Shared pieces of the gateway unit tests: a fake sidecar set up with JWT keys, a fake
inference stream, and a Flask test client over both."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from autoglm.core.errors import NotFoundError
from autoglm.gateway.app import create_app
from autoglm.gateway.settings import GatewaySettings
from tests.support.fakes import FakeSidecar
from tests.support.tokens import JWT_SECRET, bearer

#: The app API token the gateway under test requires on ``/dapr/*`` (daprd's calls).
APP_TOKEN = "test-app-token"
#: Headers of a call from daprd.
FROM_DAPRD = {"dapr-api-token": APP_TOKEN}
CHAT = {"model": "demo-glm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
USER = bearer("acme")


def _result(payload: dict[str, Any], text: str = "hello") -> dict[str, Any]:
    n = int(payload.get("n") or 1)
    result: dict[str, Any] = {
        "request_id": payload["request_id"],
        "model": "demo-glm",
        "text": text,
        "finish_reason": "length",
        "prompt_tokens": 7,
        "completion_tokens": 5 * n,
    }
    if n > 1:
        result["choices"] = [
            {"index": i, "text": text, "finish_reason": "length", "completion_tokens": 5}
            for i in range(n)
        ]
    return result


def _frames(deltas: list[str]) -> Iterator[dict[str, Any]]:
    for d in deltas:
        yield {"delta": d}
    yield {
        "result": {
            "request_id": "r",
            "model": "demo-glm",
            "text": "".join(deltas),
            "finish_reason": "stop",
            "prompt_tokens": 3,
            "completion_tokens": len(deltas),
        }
    }


class FakeStream:
    """Stands in for the daprd gRPC stream proxy (``InferenceClient.stream_fn``).

    Like ``core.streaming.stream_generate`` (a generator), nothing happens at the call:
    a failure to reach inference surfaces on the first read.
    """

    def __init__(self) -> None:
        self.deltas = ["Hel", "lo", " world"]
        self.error: Exception | None = None
        self.closed = 0
        self.payloads: list[dict[str, Any]] = []

    def __call__(self, payload: dict[str, Any], app_id: str, timeout: float) -> Iterator[Any]:
        self.payloads.append(payload)
        return self._run()

    def _run(self) -> Iterator[dict[str, Any]]:
        try:
            if self.error:
                raise self.error
            yield from _frames(self.deltas)
        finally:
            self.closed += 1


@pytest.fixture
def sidecar() -> FakeSidecar:
    fake = FakeSidecar()
    fake.secrets["jwt"] = dict(JWT_SECRET)
    fake.secrets["api-keys"] = {}
    fake.invoke_replies["generate"] = _result
    fake.invoke_replies["restore"] = NotFoundError("no snapshot")
    fake.invoke_replies["models"] = {
        "data": [{"id": "demo-glm", "state": "ready", "kind": "generate", "created": 1}]
    }
    return fake


@pytest.fixture
def stream() -> FakeStream:
    return FakeStream()


class ServerClient(FlaskClient):
    """Flask's test client, reading and closing a reply that is not an event stream at
    once, as the gateway's server does when it has written it: what the gateway does
    when a reply is closed (its audit event) has then happened when a test looks. An
    event stream is left to the test to read and close, as a client reads it."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        resp = super().open(*args, **kwargs)
        if resp.mimetype != "text/event-stream":
            resp.get_data()
            resp.close()
        return resp


def make_client(sidecar: FakeSidecar, stream: FakeStream, **settings: Any) -> FlaskClient:
    options: dict[str, Any] = {"max_body_bytes": 4096}
    options.update(settings)
    token = {"APP_API_TOKEN": os.environ.get("APP_API_TOKEN") or APP_TOKEN}
    with mock.patch.dict(os.environ, token):
        app = create_app(GatewaySettings(**options), sidecar, stream_fn=stream)
    app.test_client_class = ServerClient
    return app.test_client()


@pytest.fixture
def client(sidecar: FakeSidecar, stream: FakeStream) -> FlaskClient:
    return make_client(sidecar, stream)


def _sse(resp: Any) -> list[Any]:
    events = [line[6:] for line in resp.get_data(as_text=True).splitlines() if line]
    return [e if e == "[DONE]" else json.loads(e) for e in events]
