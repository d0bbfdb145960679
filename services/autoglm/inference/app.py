"""The Dapr edge of the inference app: which handler serves each method and topic.

Streaming rides on Dapr's gRPC proxying: the app also serves
``/autoglm.inference.v1.Inference/GenerateStream`` (server streaming, JSON-line frames),
which a caller reaches through its own daprd with ``dapr-app-id: inference`` metadata.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from dapr.ext.grpc import App

from autoglm.core import contracts
from autoglm.core.callback_server import (
    LIST_SUBSCRIPTIONS,
    Endpoint,
    RefuseFirstCalls,
    callback_app,
    serve,
)
from autoglm.core.contracts import INFERENCE
from autoglm.core.streaming import (
    STOP_METADATA,
    STOP_ON_HALF_CLOSE,
    STREAM_METHOD,
    STREAM_SERVICE,
)
from autoglm.core.tracing import grpc_carrier, server_span
from autoglm.inference.serving import InferenceService, StopSignal


def endpoint(service: InferenceService) -> Endpoint:
    return Endpoint(
        INFERENCE,
        {
            contracts.GENERATE: service.generate,
            contracts.CANCEL: service.cancel,
            contracts.EMBED: service.embed,
            contracts.MODELS: service.models,
            contracts.INFERENCE_HEALTH: service.health,
            contracts.LOAD_MODEL: service.load_model,
            contracts.UNLOAD_MODEL: service.unload_model,
        },
        observe=service.observe,
    )


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
    serve(app, endpoint(service), {contracts.INFERENCE_REQUESTS: service.on_request_event})
    contracts.rpc(INFERENCE, contracts.STREAM.name)
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
