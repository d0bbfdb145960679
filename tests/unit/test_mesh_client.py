"""Typed calls and publishes through the contract table (``MeshClient``)."""

from __future__ import annotations

import pytest

from autoglm.core.archive_protocol import RestoreReply, RestoreRequest
from autoglm.core.contracts import (
    ARCHIVER,
    AUDIT_EVENTS,
    MODELS,
    RESTORE,
    SESSION_SNAPSHOTS,
    MeshClient,
)
from autoglm.core.errors import InternalError, NotFoundError
from autoglm.core.schemas import ModelsReply, SnapshotEvent
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
