"""The Dapr edge of the inference app: one decorator per method and topic, nothing else.

Streaming rides on Dapr's gRPC proxying: the app also serves
``/autoglm.inference.v1.Inference/GenerateStream`` (server streaming, JSON-line frames),
which a caller reaches through its own daprd with ``dapr-app-id: inference`` metadata.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from cloudevents.sdk.event import v1
from dapr.ext.grpc import App, InvokeMethodRequest, TopicEventResponse

from autoglm.core import contracts
from autoglm.core.callback_server import (
    LIST_SUBSCRIPTIONS,
    RefuseFirstCalls,
    callback_app,
    caller_app_id,
    method,
    subscribe,
)
from autoglm.core.contracts import INFERENCE
from autoglm.core.pubsub import event_data, topic_response
from autoglm.core.schemas import REQUESTS_TOPIC
from autoglm.core.streaming import (
    STOP_METADATA,
    STOP_ON_HALF_CLOSE,
    STREAM_METHOD,
    STREAM_SERVICE,
)
from autoglm.core.tracing import event_carrier, grpc_carrier, server_span
from autoglm.inference.serving import InferenceService, StopSignal


def _caller(request: InvokeMethodRequest) -> str | None:
    """The calling app's id, which daprd sets from the caller's verified identity."""
    return caller_app_id(request.metadata)


def build_app(
    service: InferenceService, max_concurrent_calls: int, refuse_subscription_lists: int = 0
) -> App:
    """``refuse_subscription_lists``: fault injection, see ``RefuseFirstCalls``."""
    faults = (
        [RefuseFirstCalls(LIST_SUBSCRIPTIONS, refuse_subscription_lists)]
        if refuse_subscription_lists
        else []
    )
    app = callback_app(max_concurrent_calls, faults)

    @method(app, INFERENCE, "generate")
    def generate(request: InvokeMethodRequest) -> str:
        with server_span("generate", grpc_carrier(request.metadata)):
            return service.generate(request.data)

    @method(app, INFERENCE, "cancel")
    def cancel(request: InvokeMethodRequest) -> str:
        with server_span("cancel", grpc_carrier(request.metadata)):
            return service.cancel(request.data)

    @method(app, INFERENCE, "embed")
    def embed(request: InvokeMethodRequest) -> str:
        with server_span("embed", grpc_carrier(request.metadata)):
            return service.embed(request.data)

    @method(app, INFERENCE, "models")
    def models(request: InvokeMethodRequest) -> str:
        with server_span("models", grpc_carrier(request.metadata)):
            return service.models(request.data)

    @method(app, INFERENCE, "health")
    def health(request: InvokeMethodRequest) -> str:
        with server_span("health", grpc_carrier(request.metadata)):
            return service.health(request.data)

    @method(app, INFERENCE, "load_model")
    def load_model(request: InvokeMethodRequest) -> str:
        with server_span("load_model", grpc_carrier(request.metadata)):
            return service.load_model(request.data, _caller(request))

    @method(app, INFERENCE, "unload_model")
    def unload_model(request: InvokeMethodRequest) -> str:
        with server_span("unload_model", grpc_carrier(request.metadata)):
            return service.unload_model(request.data, _caller(request))

    @subscribe(app, INFERENCE, REQUESTS_TOPIC)
    def on_request(event: v1.Event) -> TopicEventResponse:
        with server_span(f"{REQUESTS_TOPIC} process", event_carrier(event)):
            return topic_response(service.on_request_event(event_data(event.Data())))

    contracts.rpc(INFERENCE, f"/{STREAM_SERVICE}/{STREAM_METHOD}")
    handler = stream_handler(service)
    app.add_external_service(  # type: ignore[no-untyped-call]
        lambda h, server: server.add_generic_rpc_handlers((h,)), handler
    )
    return app


def stream_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    """``/autoglm.inference.v1.Inference/GenerateStream``: one request message, then
    frames. A caller that announced it half-closes to stop gets its generation
    cancelled and the call ended with OK, so a client's hang-up never reaches Dapr's
    circuit breaker as a failure (``autoglm.core.streaming``); any other caller's
    half-close (a plain server-streaming client sends it at once) means nothing."""

    def generate_stream(
        requests: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        metadata = dict(context.invocation_metadata())
        body = next(requests, None)
        if body is None:
            return
        stop = StopSignal()
        if metadata.get(STOP_METADATA) == STOP_ON_HALF_CLOSE:
            watcher = threading.Thread(
                target=_stop_on_half_close, args=(requests, stop), daemon=True
            )
            watcher.start()
        with server_span("generate_stream", grpc_carrier(metadata)):
            yield from service.stream(body, stop)

    return grpc.method_handlers_generic_handler(
        STREAM_SERVICE,
        {STREAM_METHOD: grpc.stream_stream_rpc_method_handler(generate_stream)},
    )


def _stop_on_half_close(requests: Iterator[bytes], stop: StopSignal) -> None:
    """Wait for the end of the caller's messages (its half-close, or the call's end)."""
    try:
        for _ in requests:
            pass  # a caller sends one message; anything more is ignored
    except Exception:  # the call ended (cancelled, deadline): stop too
        pass
    stop.set()
