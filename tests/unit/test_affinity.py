"""Session affinity through Dapr actors: the actor id, the gateway's routing and its
fallback, the sidecar's actor call, readiness, and the inference actor host against an
in-process stand-in for daprd's actor event stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest
from dapr.proto.runtime.v1 import actors_pb2 as actors
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from autoglm.core import contracts
from autoglm.core.affinity import ACTOR_TYPE, session_actor_id
from autoglm.core.contracts import MeshClient
from autoglm.core.errors import DeadlineExceededError, InvalidRequestError, UnavailableError
from autoglm.core.readiness import sidecar_problems
from autoglm.core.schemas import GenerateRequest
from autoglm.core.sidecar import ActorAPI, Sidecar
from autoglm.devstack.mtls import Sentry
from autoglm.devstack.processes import free_port
from autoglm.gateway.inference_client import InferenceClient
from autoglm.inference.actor_host import ActorHost
from tests.support.fakes import FakeSidecar

pytestmark = pytest.mark.unit

RESULT = {
    "request_id": "r1",
    "model": "demo-glm",
    "text": "hi",
    "finish_reason": "length",
    "prompt_tokens": 3,
    "completion_tokens": 1,
}


def test_session_actor_id_is_a_tenant_scoped_hash() -> None:
    a = session_actor_id("acme", "sess-1")
    assert a == session_actor_id("acme", "sess-1")
    assert len(a) == 32 and int(a, 16) >= 0
    assert a != session_actor_id("other", "sess-1")
    assert "acme" not in a and "sess" not in a


class FakeActors:
    def __init__(self, reply: dict[str, Any] | Exception) -> None:
        self.reply = reply
        self.calls: list[tuple[str, str, str]] = []

    def invoke_actor(
        self,
        actor_type: str,
        actor_id: str,
        method: str,
        payload: dict[str, Any],
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        self.calls.append((actor_type, actor_id, method))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def _client(actors: FakeActors | None) -> tuple[InferenceClient, FakeSidecar]:
    sidecar = FakeSidecar()
    sidecar.invoke_replies["generate"] = {**RESULT, "text": "from any replica"}
    return InferenceClient(MeshClient(sidecar), timeout_s=5, actors=actors), sidecar


def test_a_session_turn_goes_to_its_actor() -> None:
    actors = FakeActors(RESULT)
    client, sidecar = _client(actors)
    result = client.generate(GenerateRequest(prompt="x", tenant="acme"), session="s1")
    assert result.text == "hi" and not sidecar.invocations
    assert actors.calls == [(ACTOR_TYPE, session_actor_id("acme", "s1"), "generate")]
    assert isinstance(actors, ActorAPI)


def test_turns_without_a_session_use_plain_invocation() -> None:
    actors = FakeActors(RESULT)
    client, sidecar = _client(actors)
    assert client.generate(GenerateRequest(prompt="x")).text == "from any replica"
    assert not actors.calls and [m for _, m, _ in sidecar.invocations] == ["generate"]


def test_an_unreachable_actor_falls_back_to_plain_invocation() -> None:
    actors = FakeActors(UnavailableError("no host", code="actor_unavailable"))
    client, sidecar = _client(actors)
    result = client.generate(GenerateRequest(prompt="x", tenant="acme"), session="s1")
    assert result.text == "from any replica" and len(actors.calls) == 1
    assert len(sidecar.invocations) == 1


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequestError("too long", code="context_length_exceeded"),
        UnavailableError("overloaded", code="overloaded"),
        DeadlineExceededError("slow"),
    ],
)
def test_an_answer_of_the_actor_is_not_retried_elsewhere(error: Exception) -> None:
    """The generation ran (or may still run): its error is the turn's, never a second
    generation on another replica."""
    client, sidecar = _client(FakeActors(error))
    with pytest.raises(type(error)):
        client.generate(GenerateRequest(prompt="x", tenant="acme"), session="s1")
    assert not sidecar.invocations


def _sidecar(handler: Any) -> Sidecar:
    sidecar = Sidecar(http_port=1)
    sidecar._http = httpx.Client(base_url="http://dapr", transport=httpx.MockTransport(handler))
    return sidecar


def test_sidecar_invoke_actor() -> None:
    paths = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.endswith("/a1/method/generate"):
            return httpx.Response(200, json=RESULT)
        if "/a2/" in request.url.path:
            error = {"status": 400, "message": "bad", "code": "invalid_request"}
            return httpx.Response(200, json={"error": error})
        return httpx.Response(500, json={"errorCode": "ERR_ACTOR_INVOKE_METHOD"})

    sidecar = _sidecar(handler)
    assert sidecar.invoke_actor(ACTOR_TYPE, "a1", "generate", {})["text"] == "hi"
    assert paths == [f"/v1.0/actors/{ACTOR_TYPE}/a1/method/generate"]
    with pytest.raises(InvalidRequestError):
        sidecar.invoke_actor(ACTOR_TYPE, "a2", "generate", {})
    with pytest.raises(UnavailableError) as exc:
        sidecar.invoke_actor(ACTOR_TYPE, "a3", "generate", {})
    assert exc.value.code == "actor_unavailable"
    with pytest.raises(InvalidRequestError):
        sidecar.invoke_actor(ACTOR_TYPE, "../x", "generate", {})


def test_only_actor_hosts_and_callers_get_the_placement_service() -> None:
    sentry = Sentry("127.0.0.1:1", "ca", placement="127.0.0.1:2")
    assert contracts.actor_apps() == {contracts.GATEWAY, contracts.INFERENCE}
    for app in (contracts.GATEWAY, contracts.INFERENCE):
        assert "--placement-host-address" in sentry.daprd_args(app)
    for app in (contracts.ARCHIVER, "test-client"):
        assert "--placement-host-address" not in sentry.daprd_args(app)
    assert "--placement-host-address" not in Sentry("a", "ca").daprd_args("inference")


def test_ready_only_once_the_actor_type_is_registered() -> None:
    base = {
        "id": "inference",
        "subscriptions": [{"pubsubname": "pubsub", "topic": "inference.requests"}],
        "components": [{"name": "statestore"}, {"name": "pubsub"}],
    }
    running: dict[str, Any] = {"runtimeStatus": "RUNNING", "activeActors": []}
    problems = sidecar_problems({**base, "actorRuntime": running}, "inference")
    assert problems == [f"actor type {ACTOR_TYPE} not registered"]
    running["activeActors"] = [{"type": ACTOR_TYPE, "count": 0}]
    assert sidecar_problems({**base, "actorRuntime": running}, "inference") == []
    # No placement service: no actor runtime, nothing to register.
    disabled = {"runtimeStatus": "DISABLED"}
    assert sidecar_problems({**base, "actorRuntime": disabled}, "inference") == []


class FakeDaprd(dapr_pb2_grpc.DaprServicer):  # type: ignore[misc]
    """daprd's side of ``SubscribeActorEventsAlpha1``: acknowledges the registration,
    then pushes what the test puts in ``push`` and collects the app's answers."""

    def __init__(self) -> None:
        self.push: queue.Queue[actors.SubscribeActorEventsResponseAlpha1 | None] = queue.Queue()
        self.answers: queue.Queue[actors.SubscribeActorEventsRequestAlpha1] = queue.Queue()
        self.registrations: list[list[str]] = []
        self.tokens: list[str | None] = []

    def SubscribeActorEventsAlpha1(
        self, request_iterator: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[actors.SubscribeActorEventsResponseAlpha1]:
        self.tokens.append(dict(context.invocation_metadata()).get("dapr-api-token"))
        first = next(request_iterator)
        self.registrations.append(list(first.initial_request.entities))
        threading.Thread(target=self._collect, args=(request_iterator,), daemon=True).start()
        yield actors.SubscribeActorEventsResponseAlpha1(
            initial_response=actors.SubscribeActorEventsResponseInitialAlpha1()
        )
        while (message := self.push.get()) is not None:
            yield message

    def _collect(self, requests: Iterator[Any]) -> None:
        try:
            for request in requests:
                self.answers.put(request)
        except grpc.RpcError:
            pass


def _invoke(request_id: str, method: str, data: bytes) -> actors.SubscribeActorEventsResponseAlpha1:
    return actors.SubscribeActorEventsResponseAlpha1(
        invoke_request=actors.SubscribeActorEventsResponseInvokeRequestAlpha1(
            id=request_id, actor_type=ACTOR_TYPE, actor_id="a1", method=method, data=data
        )
    )


def test_actor_host_serves_invocations_over_the_stream_and_dials_again() -> None:
    daprd = FakeDaprd()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    dapr_pb2_grpc.add_DaprServicer_to_server(daprd, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    host = ActorHost(
        {"generate": lambda body, _metadata: '{"echo": ' + body.decode() + "}"},
        dapr_grpc_address=f"127.0.0.1:{port}",
        api_token="tok",
        max_workers=2,
        reconnect_s=0.05,
    ).start()
    try:
        assert host.registered.wait(10)
        assert daprd.registrations == [[ACTOR_TYPE]] and daprd.tokens == ["tok"]
        daprd.push.put(_invoke("1", "generate", b'{"n": 1}'))
        answer = daprd.answers.get(timeout=10)
        assert answer.invoke_response.id == "1"
        assert answer.invoke_response.data == b'{"echo": {"n": 1}}'
        daprd.push.put(_invoke("2", "nope", b"{}"))
        failed = daprd.answers.get(timeout=10).request_failed
        assert failed.id == "2" and failed.code == grpc.StatusCode.NOT_FOUND.value[0]
        daprd.push.put(
            actors.SubscribeActorEventsResponseAlpha1(
                deactivate_request=actors.SubscribeActorEventsResponseDeactivateRequestAlpha1(
                    id="3", actor_type=ACTOR_TYPE, actor_id="a1"
                )
            )
        )
        assert daprd.answers.get(timeout=10).deactivate_response.id == "3"
        # daprd ends the stream (restarted): the host registers again.
        daprd.push.put(None)
        pause = threading.Event()
        for _ in range(100):
            if len(daprd.registrations) == 2:
                break
            pause.wait(0.1)
        assert daprd.registrations == [[ACTOR_TYPE], [ACTOR_TYPE]]
        assert host.registered.wait(10)
    finally:
        daprd.push.put(None)
        host.stop(5)
        server.stop(0)
