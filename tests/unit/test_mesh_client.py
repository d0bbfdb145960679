"""Typed calls and publishes through the contract table (``MeshClient``)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError

from autoglm.core.archive_protocol import RestoreReply, RestoreRequest
from autoglm.core.contracts import (
    ARCHIVER,
    AUDIT_EVENTS,
    MODELS,
    RESTORE,
    RPCS,
    SESSION_SNAPSHOTS,
    MeshClient,
)
from autoglm.core.errors import InternalError, NotFoundError, UnavailableError
from autoglm.core.schemas import ModelsReply, SnapshotEvent
from autoglm.core.sidecar import Sidecar
from tests.support.fakes import FakeSidecar

pytestmark = pytest.mark.unit


def test_call_sends_the_request_model_and_returns_the_reply_model() -> None:
    fake = FakeSidecar()
    fake.invoke_replies["restore"] = lambda p: {**p, "version": 3, "messages": []}
    mesh = MeshClient(fake, {ARCHIVER: "archiver-canary"})
    reply = mesh.call(RESTORE, RestoreRequest(tenant="acme", session_id="s1"))
    assert isinstance(reply, RestoreReply) and reply.version == 3
    assert fake.invocations == [
        ("archiver-canary", "restore", {"tenant": "acme", "session_id": "s1", "version": None})
    ]
    fake.invoke_replies["models"] = {"data": [{"id": "m"}]}
    assert mesh.call(MODELS) == ModelsReply(data=[{"id": "m"}])  # a method without a body


def test_a_reply_that_does_not_fit_its_model_is_an_internal_error() -> None:
    fake = FakeSidecar()
    fake.invoke_replies["restore"] = {"unexpected": True}
    with pytest.raises(InternalError, match=r"malformed reply from archiver\.restore"):
        MeshClient(fake).call(RESTORE, RestoreRequest(tenant="acme", session_id="s1"))


def test_failures_come_back_as_themselves() -> None:
    fake = FakeSidecar()
    fake.invoke_replies["restore"] = NotFoundError("no snapshot")
    with pytest.raises(NotFoundError):
        MeshClient(fake).call(RESTORE, RestoreRequest(tenant="acme", session_id="s1"))


def test_the_wrong_request_or_event_model_is_refused_before_anything_is_sent() -> None:
    fake = FakeSidecar()
    mesh = MeshClient(fake)
    event = SnapshotEvent(tenant="acme", session_id="s1", version=1, messages=[])
    with pytest.raises(TypeError):
        mesh.call(RESTORE, event)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mesh.call(MODELS, RestoreRequest(tenant="acme", session_id="s1"))
    with pytest.raises(TypeError):
        mesh.publish(AUDIT_EVENTS, event)  # type: ignore[arg-type]
    assert fake.invocations == [] and fake.published == []
    mesh.publish(SESSION_SNAPSHOTS, event)
    assert fake.published == [("session.snapshots", event.model_dump(mode="json"))]


def test_a_soon_publish_goes_through_publish_soon() -> None:
    fake = FakeSidecar()
    soon: list[str] = []
    fake.publish_soon = lambda topic, payload, pubsub="pubsub": soon.append(topic)  # type: ignore[method-assign]
    event = SnapshotEvent(tenant="acme", session_id="s1", version=1, messages=[])
    MeshClient(fake).publish(SESSION_SNAPSHOTS, event, soon=True)
    assert soon == ["session.snapshots"] and fake.published == []


# -- through a real Sidecar: models straight to and from JSON ---------------------------
def _sidecar(handler: Callable[[httpx.Request], httpx.Response]) -> Sidecar:
    sidecar = Sidecar(http_port=1)
    sidecar._http = httpx.Client(base_url="http://dapr", transport=httpx.MockTransport(handler))
    return sidecar


def test_no_reply_model_accepts_an_error_object() -> None:
    """``Sidecar.invoke_model`` takes a reply that validates as the method's model for
    that reply: an app's structured error must never pass as one."""
    error = {"error": {"status": 404, "message": "no snapshot", "code": "not_found"}}
    for method in RPCS:
        if method.reply is not None:
            with pytest.raises(ValidationError):
                method.reply.model_validate_json(json.dumps(error))


def test_a_sidecar_call_sends_the_model_as_json_and_validates_the_reply() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path.endswith("/restore"):
            body = json.loads(request.content)
            return httpx.Response(200, json={**body, "version": 3, "messages": []})
        return httpx.Response(200, json={"data": [{"id": "m"}]})

    mesh = MeshClient(_sidecar(handler))
    reply = mesh.call(RESTORE, RestoreRequest(tenant="acme", session_id="s1"))
    assert reply == RestoreReply(tenant="acme", session_id="s1", version=3, messages=[])
    assert sent[0].url.path == "/v1.0/invoke/archiver/method/restore"
    assert sent[0].headers["content-type"] == "application/json"
    assert json.loads(sent[0].content) == {"tenant": "acme", "session_id": "s1", "version": None}
    assert mesh.call(MODELS) == ModelsReply(data=[{"id": "m"}])
    assert json.loads(sent[1].content) == {}


def test_a_sidecar_calls_errors_and_malformed_replies_are_read_as_before() -> None:
    replies = {
        "s-error": httpx.Response(
            200, json={"error": {"status": 404, "message": "gone", "code": "not_found"}}
        ),
        "s-dapr": httpx.Response(500, json={"errorCode": "ERR_DIRECT_INVOKE"}),
        "s-malformed": httpx.Response(200, json={"unexpected": True}),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return replies[json.loads(request.content)["session_id"]]

    mesh = MeshClient(_sidecar(handler))
    with pytest.raises(NotFoundError, match="gone"):
        mesh.call(RESTORE, RestoreRequest(tenant="acme", session_id="s-error"))
    with pytest.raises(UnavailableError) as unavailable:
        mesh.call(RESTORE, RestoreRequest(tenant="acme", session_id="s-dapr"))
    assert unavailable.value.code == "upstream_unavailable"
    with pytest.raises(InternalError, match=r"malformed reply from archiver\.restore"):
        mesh.call(RESTORE, RestoreRequest(tenant="acme", session_id="s-malformed"))
