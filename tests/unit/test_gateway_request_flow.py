"""The gateway's request flow: one typed ``RequestContext`` per request, passed to the
serving layer explicitly; serving modules free of Flask; tokens charged from the usage
the serving layer computed; chat and completions sharing one set of limits."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from flask.testing import FlaskClient

from autoglm.core.contracts import INFERENCE, MeshClient
from autoglm.core.errors import AuthenticationError, InvalidRequestError
from autoglm.core.schemas import parse
from autoglm.gateway.context import RequestContext
from autoglm.gateway.inference_client import InferenceClient
from autoglm.gateway.openai.chat.protocol import ChatCompletionRequest
from autoglm.gateway.openai.chat.serving import ChatCompletionService
from autoglm.gateway.openai.completions.protocol import CompletionRequest
from autoglm.gateway.openai.completions.serving import CompletionService
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.security.principal import Principal
from autoglm.gateway.sessions.store import SessionStore
from autoglm.gateway.settings import GatewaySettings
from tests.support.fakes import FakeSidecar
from tests.unit.gateway_fixtures import (  # noqa: F401 - fixtures
    CHAT,
    USER,
    client,
    sidecar,
    stream,
)

pytestmark = pytest.mark.unit

#: Every module below the HTTP routes: none may import Flask, even indirectly.
SERVING_MODULES = [
    "autoglm.gateway.context",
    "autoglm.gateway.openai.serving",
    "autoglm.gateway.openai.chat.serving",
    "autoglm.gateway.openai.completions.serving",
    "autoglm.gateway.openai.embeddings.serving",
    "autoglm.gateway.openai.models.serving",
    "autoglm.gateway.openai.responses.serving",
    "autoglm.gateway.sessions.store",
    "autoglm.gateway.sessions.serving",
    "autoglm.gateway.jobs.store",
    "autoglm.gateway.jobs.serving",
    "autoglm.gateway.attachments.serving",
    "autoglm.gateway.audit_log.serving",
]


def test_serving_modules_do_not_import_flask() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {SERVING_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'flask' not in sys.modules, name\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class Charges:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, tenant: str, tokens: int) -> None:
        self.calls.append((tenant, tokens))


def _ctx(charges: Charges, tenant: str | None = "acme") -> RequestContext:
    principal = Principal(tenant, "u", "user", "jwt") if tenant else None
    return RequestContext(request_id="r1", principal=principal, charge_tokens=charges)


def test_context_charges_its_caller_and_needs_one() -> None:
    charges = Charges()
    ctx = _ctx(charges)
    ctx.charge(5)
    ctx.charge(0)  # nothing to charge: no call
    ctx.meter()(3)  # a stream's meter outlives the request
    assert charges.calls == [("acme", 5), ("acme", 3)]
    anonymous = _ctx(charges, tenant=None)
    anonymous.charge(9)
    anonymous.meter()(9)
    assert charges.calls == [("acme", 5), ("acme", 3)]
    with pytest.raises(AuthenticationError):
        _ = anonymous.tenant


def _services(
    fake: FakeSidecar, **settings: Any
) -> tuple[ChatCompletionService, CompletionService]:
    inference = InferenceClient(MeshClient(fake, {INFERENCE: INFERENCE}), timeout_s=5)
    config, blocked = GatewaySettings(**settings), ContentFilter()
    return (
        ChatCompletionService(inference, blocked, config, SessionStore(fake)),
        CompletionService(inference, blocked, config),
    )


def test_tokens_are_charged_from_the_serving_result(sidecar: FakeSidecar) -> None:  # noqa: F811
    chat, completions = _services(sidecar)
    charges = Charges()
    served = chat.create(_ctx(charges), parse(ChatCompletionRequest, CHAT))
    assert charges.calls == [("acme", served.body["usage"]["total_tokens"])] == [("acme", 12)]
    two = {"model": "demo-glm", "prompt": ["a", "b"], "max_tokens": 5}
    served = completions.create(_ctx(charges), parse(CompletionRequest, two))
    assert charges.calls[-1] == ("acme", 24) == ("acme", served.body["usage"]["total_tokens"])


def test_chat_and_completions_share_their_limits(sidecar: FakeSidecar) -> None:  # noqa: F811
    chat, completions = _services(sidecar, max_n=2, max_tokens_limit=10)
    for service, body in (
        (chat, {**CHAT, "n": 3}),
        (completions, {"model": "m", "prompt": ["a", "b", "c"]}),
    ):
        with pytest.raises(InvalidRequestError, match="must be at most 2") as exc:
            service.parse(_json(body))
        assert exc.value.param == "n"
    for service, body in (
        (chat, {**CHAT, "max_tokens": 11}),
        (completions, {"model": "m", "prompt": "a", "max_tokens": 11}),
    ):
        with pytest.raises(InvalidRequestError, match="max_tokens must be at most 10") as exc:
            service.parse(_json(body))
        assert exc.value.param == "max_tokens"


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_job_audit_events_name_the_model(
    client: FlaskClient,  # noqa: F811
    sidecar: FakeSidecar,  # noqa: F811
) -> None:
    assert client.post("/v1/jobs", json=CHAT, headers=USER).status_code == 202
    (event,) = [p for t, p in sidecar.published if t == "audit"]
    assert event["action"] == "POST /v1/jobs" and event["model"] == "demo-glm"


def test_every_reply_carries_the_context_request_id(client: FlaskClient) -> None:  # noqa: F811
    ok = client.post("/v1/chat/completions", json=CHAT, headers={**USER, "x-request-id": "abc"})
    assert ok.headers["x-request-id"] == "abc"
    refused = client.post("/v1/chat/completions", json=CHAT)  # no token: 401
    assert refused.status_code == 401 and len(refused.headers["x-request-id"]) == 32


@pytest.mark.parametrize("name", ["traceparent", "Traceparent", "TRACEPARENT"])
def test_the_request_continues_the_clients_trace_whatever_the_header_case(
    client: FlaskClient,  # noqa: F811
    sidecar: FakeSidecar,  # noqa: F811
    name: str,
) -> None:
    """The trace context is read from Werkzeug's headers as they are (issue 15: no copy
    of every header per request), which find a header in any case."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    parent = f"00-{trace_id}-b7ad6b7169203331-01"
    resp = client.post("/v1/chat/completions", json=CHAT, headers={**USER, name: parent})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    (event,) = [p for t, p in sidecar.published if t == "audit"]
    assert event["trace_id"] == trace_id
