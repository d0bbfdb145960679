"""``load/flask_forwarder.py``: the bare Flask app that ``make bench`` puts in front of
the Dapr floor's echo (issue 15's lower bound for a Flask gateway)."""

from __future__ import annotations

from typing import Any

import pytest
from load import flask_forwarder

from autoglm.gateway.__main__ import WORKER_CLASS
from autoglm.gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit


class EchoThroughSidecar:
    """Stands in for ``Sidecar``: records the invocation, replies as the echo app does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def invoke(self, app_id: str, method: str, payload: Any) -> Any:
        self.calls.append((app_id, method, payload))
        return payload


def test_the_body_goes_to_the_echo_app_and_its_reply_comes_back() -> None:
    sidecar = EchoThroughSidecar()
    client = flask_forwarder.forwarder_app(sidecar).test_client()
    body = {"messages": [{"role": "user", "content": "hi"}], "sampling": {"max_tokens": 1}}
    resp = client.post(flask_forwarder.ROUTE, json=body)
    assert resp.status_code == 200
    assert resp.get_json() == body
    assert sidecar.calls == [("echo", "echo", body)]


def test_it_runs_on_the_gateways_own_server_configuration() -> None:
    settings = GatewaySettings(port=8099, header_timeout_s=7)
    server = flask_forwarder.ForwarderServer(settings)
    assert server.cfg.worker_class_str == WORKER_CLASS
    assert server.cfg.bind == ["127.0.0.1:8099"]
    assert server.cfg.keepalive == 7
    assert server.cfg.workers == 1
