"""``autoglm.core.bulk_delivery``: a bulk delivery through the callback server's gRPC
edge, as daprd makes it: entries run at once, each answered on its own, in its own
trace; the subscription tells daprd it is a bulk one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
import yaml
from dapr.clients.grpc.interceptors import DaprClientInterceptor
from dapr.proto.runtime.v1 import appcallback_pb2 as pb
from google.protobuf import empty_pb2
from google.protobuf.struct_pb2 import Struct
from opentelemetry import trace

from autoglm.archiver.settings import ArchiverSettings
from autoglm.core import contracts
from autoglm.core.bulk_delivery import BulkConfig, BulkDelivery
from autoglm.core.callback_server import Endpoint, callback_app, serve
from autoglm.core.contracts import ARCHIVER
from autoglm.core.pubsub import Ack
from autoglm.devstack.layout import REPO_ROOT

pytestmark = pytest.mark.unit

TOKEN = "app-token"
BULK = "/dapr.proto.runtime.v1.AppCallback/OnBulkTopicEvent"
LIST = "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions"


class Handler:
    """Answers each event as its data says; records the trace it ran in."""

    def __init__(self, together: int = 1) -> None:
        self.barrier = threading.Barrier(together, timeout=5)
        self.traces: dict[str, int] = {}

    def __call__(self, body: bytes) -> Ack:
        data = json.loads(body)
        self.barrier.wait()  # every entry of the bulk must be running at once
        self.traces[data["n"]] = trace.get_current_span().get_span_context().trace_id
        if data["answer"] == "raise":
            raise OSError("disk gone")
        return Ack(data["answer"])


@contextmanager
def archiver_edge(handler: Handler, token: str | None = TOKEN) -> Iterator[grpc.Channel]:
    topics: dict[contracts.Topic[Any], Any] = {contracts.AUDIT_EVENTS: handler}
    pool = futures.ThreadPoolExecutor(8)
    bulk = BulkDelivery({t.name: h for t, h in topics.items()}, pool)
    app = callback_app(4, [bulk], app_token=TOKEN)
    serve(app, Endpoint(ARCHIVER, {}), topics, bulk={"audit": BulkConfig(16, 50)})
    port = app._server.add_insecure_port("127.0.0.1:0")
    app._server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    if token is not None:
        channel = grpc.intercept_channel(
            channel, DaprClientInterceptor([("dapr-api-token", token)])
        )
    try:
        yield channel
    finally:
        channel.close()
        app._server.stop(grace=None)
        pool.shutdown()


def entry(n: str, answer: str, trace_id: int) -> pb.TopicEventBulkRequestEntry:
    extensions = Struct()
    extensions.update({"traceparent": f"00-{trace_id:032x}-{0xAB:016x}-01", "topic": "audit"})
    ce = pb.TopicEventCERequest(
        id=n,
        source="gateway",
        type="com.dapr.event.sent",
        spec_version="1.0",
        data_content_type="application/json",
        data=json.dumps({"n": n, "answer": answer}).encode(),
        extensions=extensions,
    )
    return pb.TopicEventBulkRequestEntry(entry_id=f"e-{n}", cloud_event=ce)


def bulk_call(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        BULK,
        request_serializer=pb.TopicEventBulkRequest.SerializeToString,
        response_deserializer=pb.TopicEventBulkResponse.FromString,
    )


def test_entries_run_at_once_and_are_answered_each_in_its_own_trace() -> None:
    answers = {"a": "success", "b": "retry", "c": "drop", "d": "raise"}
    handler = Handler(together=len(answers))
    with archiver_edge(handler) as channel:
        request = pb.TopicEventBulkRequest(
            id="bulk-1",
            topic="audit",
            pubsub_name="pubsub",
            entries=[entry(n, a, 0x1000 + i) for i, (n, a) in enumerate(answers.items())],
        )
        reply = bulk_call(channel)(request, timeout=10)
    status = {s.entry_id: s.status for s in reply.statuses}
    assert status == {
        "e-a": pb.TopicEventResponse.SUCCESS,
        "e-b": pb.TopicEventResponse.RETRY,
        "e-c": pb.TopicEventResponse.DROP,
        "e-d": pb.TopicEventResponse.RETRY,  # a handler that raised: that entry only
    }
    assert handler.traces == {n: 0x1000 + i for i, n in enumerate(answers)}


def test_bulk_calls_need_the_app_token() -> None:
    with archiver_edge(Handler(), token=None) as channel:
        request = pb.TopicEventBulkRequest(topic="audit", entries=[entry("a", "success", 1)])
        with pytest.raises(grpc.RpcError) as refused:
            bulk_call(channel)(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_subscription_tells_daprd_to_deliver_in_bulk() -> None:
    with archiver_edge(Handler()) as channel:
        listed = channel.unary_unary(
            LIST,
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=pb.ListTopicSubscriptionsResponse.FromString,
        )(empty_pb2.Empty(), timeout=10)
    (sub,) = listed.subscriptions
    assert (sub.topic, sub.dead_letter_topic) == ("audit", "audit.deadletter")
    config = sub.bulk_subscribe
    assert (config.enabled, config.max_messages_count, config.max_await_duration_ms) == (
        True,
        16,
        50,
    )


@pytest.mark.parametrize("component", ["components/pubsub.yaml", "k8s/base/dapr/pubsub.yaml"])
def test_each_topics_bulk_can_fill_while_the_other_holds_workers(component: str) -> None:
    """daprd holds every event waiting for its bulk on one of the pub/sub component's
    ``concurrency`` workers, shared by the archiver's topics: with a bulk at most half of
    them, under load one topic's bulk always fills and goes at once, rather than both
    waiting out ``bulk_max_await_ms`` with every worker held (README: bulk deliveries)."""
    spec = yaml.safe_load((REPO_ROOT / component).read_text())["spec"]
    concurrency = int(next(m["value"] for m in spec["metadata"] if m["name"] == "concurrency"))
    settings = ArchiverSettings()
    topics = [t for t in contracts.TOPICS if ARCHIVER in t.subscribers]
    assert len(topics) == 2
    assert settings.bulk_max_messages * len(topics) <= concurrency
    assert settings.bulk_max_await_ms <= 250  # the archive's lag behind a reply
