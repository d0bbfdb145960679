"""The Dapr edge of the archiver app: one decorator per method and topic, nothing else."""

from __future__ import annotations

from cloudevents.sdk.event import v1
from dapr.ext.grpc import App, InvokeMethodRequest, TopicEventResponse

from autoglm.archiver.serving import ArchiverService
from autoglm.core import archive_protocol as proto
from autoglm.core.callback_server import callback_app, method, subscribe
from autoglm.core.contracts import ARCHIVER
from autoglm.core.pubsub import event_data, topic_response
from autoglm.core.schemas import AUDIT_TOPIC, SNAPSHOTS_TOPIC
from autoglm.core.tracing import event_carrier, grpc_carrier, server_span


def build_app(service: ArchiverService, max_concurrent_calls: int) -> App:
    app = callback_app(max_concurrent_calls)

    @subscribe(app, ARCHIVER, SNAPSHOTS_TOPIC)
    def on_snapshot(event: v1.Event) -> TopicEventResponse:
        with server_span(f"{SNAPSHOTS_TOPIC} process", event_carrier(event)):
            return topic_response(service.on_snapshot(event_data(event.Data())))

    @subscribe(app, ARCHIVER, AUDIT_TOPIC)
    def on_audit(event: v1.Event) -> TopicEventResponse:
        with server_span(f"{AUDIT_TOPIC} process", event_carrier(event)):
            return topic_response(service.on_audit(event_data(event.Data())))

    @method(app, ARCHIVER, proto.RESTORE)
    def restore(request: InvokeMethodRequest) -> str:
        with server_span("restore", grpc_carrier(request.metadata)):
            return service.restore(request.data)

    @method(app, ARCHIVER, proto.ATTACHMENT_START)
    def attachment_start(request: InvokeMethodRequest) -> str:
        with server_span("attachment_start", grpc_carrier(request.metadata)):
            return service.attachment_start(request.data)

    @method(app, ARCHIVER, proto.ATTACHMENT_PUT)
    def attachment_put(request: InvokeMethodRequest) -> str:
        with server_span("attachment_put", grpc_carrier(request.metadata)):
            return service.attachment_put(request.data)

    @method(app, ARCHIVER, proto.ATTACHMENT_GET)
    def attachment_get(request: InvokeMethodRequest) -> str:
        with server_span("attachment_get", grpc_carrier(request.metadata)):
            return service.attachment_get(request.data)

    @method(app, ARCHIVER, proto.AUDIT_QUERY)
    def audit_query(request: InvokeMethodRequest) -> str:
        with server_span("audit_query", grpc_carrier(request.metadata)):
            return service.audit_query(request.data)

    @method(app, ARCHIVER, proto.HEALTH)
    def health(request: InvokeMethodRequest) -> str:
        return service.health(request.data)

    app.register_health_check(service.check_health)  # type: ignore[no-untyped-call]
    return app
