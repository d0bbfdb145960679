"""Bulk subscribe: daprd hands a subscriber the events it has for a topic in one call.

Each delivery through daprd costs a gRPC call in both processes and the SDK's wrapping
and the span in the app; for the archiver, which takes an audit event per API request
and a snapshot event per session change, that edge was a third of its CPU per event.
With ``bulkSubscribe`` daprd collects a topic's events for up to ``max_await_ms`` (or
``max_messages``) and delivers them in one ``OnBulkTopicEvent`` call.

The SDK's servicer answers such a call by running the topic's handler on the entries one
after the other; the archiver's writes are group commits (one fsync for the events that
arrive together), so here the entries run at once, on a pool, and their writes share
fsyncs. Every entry is still its own event: its handler runs in its own span continuing
the trace its CloudEvent carries, and is answered on its own (SUCCESS, RETRY, DROP), so
daprd retries only the entries answered RETRY (the subscription's resiliency policy, then
the dead-letter topic, as for single deliveries) and dead-letters those answered DROP.
A handler that raises is a RETRY of its entry, never of the others.

``BulkDelivery`` is a server interceptor: the SDK registers its own servicer for these
methods when the ``App`` is built, and an interceptor is how a call reaches ours instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2 as pb
from google.protobuf.json_format import MessageToDict

from autoglm.core.pubsub import Ack
from autoglm.core.tracing import server_span

log = logging.getLogger(__name__)

#: daprd 1.18 calls the first; the second is the older name it falls back to.
BULK_METHODS = frozenset(
    {
        "/dapr.proto.runtime.v1.AppCallback/OnBulkTopicEvent",
        "/dapr.proto.runtime.v1.AppCallbackAlpha/OnBulkTopicEventAlpha1",
    }
)

_STATUS = {
    Ack.SUCCESS: pb.TopicEventResponse.SUCCESS,
    Ack.RETRY: pb.TopicEventResponse.RETRY,
    Ack.DROP: pb.TopicEventResponse.DROP,
}

#: A topic's handler: the event's data as bytes in, how to acknowledge it out.
TopicHandler = Callable[[bytes], Ack]


@dataclass(frozen=True)
class BulkConfig:
    """How daprd batches a topic's deliveries (the subscription's ``bulkSubscribe``)."""

    max_messages: int = 16
    max_await_ms: int = 100

    def proto(self) -> pb.BulkSubscribeConfig:
        return pb.BulkSubscribeConfig(
            enabled=True,
            max_messages_count=self.max_messages,
            max_await_duration_ms=self.max_await_ms,
        )


def entry_event(entry: pb.TopicEventBulkRequestEntry) -> tuple[bytes, dict[str, str]]:
    """An entry's data and its trace context (``traceparent``/``tracestate`` of its
    CloudEvent)."""
    if entry.HasField("cloud_event"):
        ce = entry.cloud_event
        extensions = MessageToDict(ce.extensions) if ce.HasField("extensions") else {}
        carrier = {k: str(v) for k, v in extensions.items() if k in ("traceparent", "tracestate")}
        return ce.data, carrier
    carrier = {k: v for k, v in entry.metadata.items() if k in ("traceparent", "tracestate")}
    return entry.bytes, carrier


class BulkDelivery(grpc.ServerInterceptor):  # type: ignore[misc]
    """Serves ``OnBulkTopicEvent`` for ``handlers`` (topic name -> handler), each
    entry on ``pool`` and answered on its own."""

    def __init__(self, handlers: Mapping[str, TopicHandler], pool: futures.Executor) -> None:
        self.handlers = dict(handlers)
        self.pool = pool
        self._handler = grpc.unary_unary_rpc_method_handler(
            self.deliver,
            request_deserializer=pb.TopicEventBulkRequest.FromString,
            response_serializer=pb.TopicEventBulkResponse.SerializeToString,
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if details.method in BULK_METHODS:
            return self._handler
        return continuation(details)

    def deliver(self, request: pb.TopicEventBulkRequest, context: Any) -> pb.TopicEventBulkResponse:
        topic = request.topic
        handler = self.handlers.get(topic)
        if handler is None:
            # daprd dead-letters a bulk answered UNIMPLEMENTED: only for topics never
            # subscribed in bulk, which daprd does not send here.
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no bulk handler for {topic}")
            raise AssertionError("unreachable: abort raises")
        pending = [self.pool.submit(self._one, topic, handler, e) for e in request.entries]
        statuses = [
            pb.TopicEventBulkResponseEntry(entry_id=entry.entry_id, status=done.result())
            for entry, done in zip(request.entries, pending, strict=True)
        ]
        return pb.TopicEventBulkResponse(statuses=statuses)

    @staticmethod
    def _one(
        topic: str, handler: TopicHandler, entry: pb.TopicEventBulkRequestEntry
    ) -> pb.TopicEventResponse.TopicEventResponseStatus.ValueType:
        data, carrier = entry_event(entry)
        with server_span(f"{topic} process", carrier):
            try:
                ack = handler(data)
            except Exception:
                log.exception("%s event failed; redelivered", topic)
                ack = Ack.RETRY
        return _STATUS[ack]
