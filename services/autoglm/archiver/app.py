"""The Dapr edge of the archiver app: one decorator per topic, nothing else."""

from __future__ import annotations

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App

from autoglm.archiver.serving import ArchiverService
from autoglm.core.pubsub import event_data
from autoglm.core.schemas import AUDIT_TOPIC, PUBSUB, SNAPSHOTS_TOPIC


def build_app(service: ArchiverService) -> App:
    app = App()

    @app.subscribe(PUBSUB, SNAPSHOTS_TOPIC, dead_letter_topic=f"{SNAPSHOTS_TOPIC}.deadletter")
    def on_snapshot(event: v1.Event) -> TopicEventResponse:
        return TopicEventResponse(service.on_snapshot(event_data(event.Data())).value)

    @app.subscribe(PUBSUB, AUDIT_TOPIC, dead_letter_topic=f"{AUDIT_TOPIC}.deadletter")
    def on_audit(event: v1.Event) -> TopicEventResponse:
        return TopicEventResponse(service.on_audit(event_data(event.Data())).value)

    return app
