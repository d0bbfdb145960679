"""The Dapr edge of the inference app: one decorator per method and topic, nothing else."""

from __future__ import annotations

from cloudevents.sdk.event import v1
from dapr.clients.grpc._request import InvokeMethodRequest
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App

from autoglm.core.pubsub import event_data
from autoglm.core.schemas import PUBSUB, REQUESTS_TOPIC
from autoglm.inference.serving import InferenceService


def build_app(service: InferenceService) -> App:
    app = App()

    @app.method("generate")
    def generate(request: InvokeMethodRequest) -> str:
        return service.generate(request.data)

    @app.method("models")
    def models(request: InvokeMethodRequest) -> str:
        return service.models(request.data)

    @app.subscribe(PUBSUB, REQUESTS_TOPIC, dead_letter_topic=f"{REQUESTS_TOPIC}.deadletter")
    def on_request(event: v1.Event) -> TopicEventResponse:
        return TopicEventResponse(service.on_request_event(event_data(event.Data())).value)

    return app
