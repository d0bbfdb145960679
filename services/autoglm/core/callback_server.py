"""The gRPC server daprd calls back into, sized for the work the app takes at once.

``dapr.ext.grpc.App()`` defaults to a pool of 10 threads. Every unary call and every
server stream holds one thread until it returns, so with the default an app that
batches 32 generations sees at most 10 of them, and ten long streams starve even
health checks. The pool is sized from the app's own concurrency limits instead, and
``maximum_concurrent_rpcs`` makes gRPC refuse (RESOURCE_EXHAUSTED) what exceeds it
rather than queueing it without bound.

``App.stop()`` stops the server with no grace, aborting calls in flight (an upload, a
restore, a generation); ``stop_gracefully`` lets them finish first, within a bound.

Every call must carry the app API token (``APP_API_TOKEN``) in its ``dapr-api-token``
metadata: daprd sends it on every call it makes to the app (methods, topic deliveries,
health checks, proxied streams), so a local process that reaches the app's port
directly, without the token, is refused (UNAUTHENTICATED). Without a token configured
the app refuses every call: it never runs open.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
from cloudevents.sdk.event import v1
from dapr.conf import settings
from dapr.ext.grpc import App, InvokeMethodRequest, TopicEventResponse
from dapr.ext.grpc._servicer import DELIMITER
from pydantic import BaseModel

from autoglm.core import contracts
from autoglm.core.bulk_delivery import BulkConfig, TopicHandler
from autoglm.core.errors import AutoGLMError, InternalError
from autoglm.core.lifecycle import on_shutdown
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import PUBSUB, parse
from autoglm.core.sidecar import error_reply
from autoglm.core.tracing import event_carrier, grpc_carrier, server_span

log = logging.getLogger(__name__)

#: Metadata key daprd sends the app token in (and apps send the Dapr API token in).
TOKEN_METADATA = "dapr-api-token"
#: The two calls daprd 1.18 makes without the app token (``ListTopicSubscriptions`` in
#: pkg/runtime/processor/subscriber, ``HealthCheck`` in pkg/channel/grpc's HealthProbe):
#: they take no input and tell only which topics the app subscribes to (also in k8s/'s
#: Subscriptions) and whether it is up. Everything that acts or reads data needs it.
OPEN_METHODS = frozenset(
    {
        "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions",
        "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck",
    }
)

#: After the grace, gRPC cancels the calls left; allow it this long to finish doing so.
CANCEL_MARGIN_S = 5.0


class RequireAppToken(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses (UNAUTHENTICATED) every call whose metadata lacks the app API token."""

    def __init__(self, token: str | None) -> None:
        self._token = token or ""
        if not self._token:
            log.error("APP_API_TOKEN is not set: every call from daprd will be refused")

    def allowed(self, metadata: Any) -> bool:
        if not self._token:
            return False
        sent = [str(v) for k, v in metadata or () if k == TOKEN_METADATA]
        return any(hmac.compare_digest(v.encode(), self._token.encode()) for v in sent)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        if self.allowed(details.invocation_metadata):
            return handler
        return _refusing(handler)


def caller_app_id(metadata: Any) -> str | None:
    """The calling app's id as daprd states it in ``dapr-caller-app-id``, or None.

    daprd sets the header from the caller's identity, but on some paths (HTTP headers
    of an invoke, gRPC proxying) a header the caller added itself travels alongside it.
    More than one distinct value means someone tried to forge it: no identity then."""
    values = (metadata or {}).get("dapr-caller-app-id") or []
    if isinstance(values, str):
        values = [values]
    distinct = {str(v) for v in values}
    return distinct.pop() if len(distinct) == 1 else None


def method(app: App, app_id: str, name: str) -> Callable[[Any], Any]:
    """``app.method(name)`` for a method the contract table declares for ``app_id``
    (``autoglm.core.contracts``); a KeyError for one it does not, so no app serves a
    method that the access lists do not know about."""
    contracts.rpc(app_id, name)
    return app.method(name)  # type: ignore[no-any-return]


def subscribe(app: App, app_id: str, topic: str) -> Callable[[Any], Any]:
    """``app.subscribe`` for a topic the contract table lets ``app_id`` take, with its
    dead-letter topic."""
    declared = contracts.topic(topic)
    if app_id not in declared.subscribers:
        raise KeyError(f"{app_id} does not subscribe to {topic!r} in the contract table")
    return app.subscribe(  # type: ignore[no-any-return]
        PUBSUB, topic, dead_letter_topic=declared.dead_letter
    )


def subscribe_in_bulk(app: App, topic: str, config: BulkConfig) -> None:
    """Mark ``topic``'s subscription (registered already) as a bulk one in what the app
    tells daprd (``ListTopicSubscriptions``); its deliveries then come to the
    ``BulkDelivery`` interceptor the app was built with. The SDK has no argument for it."""
    registered = app._servicer._registered_topics_map[f"{PUBSUB}{DELIMITER}{topic}"]
    registered.subscription.bulk_subscribe.CopyFrom(config.proto())


#: A method's handler: called with the request model the contract table declares for it
#: (with nothing where it declares none) and, if it has a ``caller`` parameter, the
#: calling app's id; returns the declared reply model (or a JSON object where the table
#: declares none).
Handler = Callable[..., BaseModel | Mapping[str, Any]]
#: Maps a failure that is not an ``AutoGLMError`` to the error to answer (None: internal).
Failure = Callable[[str, Exception], AutoGLMError | None]
#: Told every call: method, the parsed request (None if it did not parse), the outcome
#: (``ok`` or the error's code) and its duration in seconds.
Observer = Callable[[str, BaseModel | None, str, float], None]


class Endpoint:
    """An app's service-invocation methods, served as the contract table declares them.

    Each call is parsed into the declared request model, runs in a SERVER span that
    continues the caller's trace, and is answered with the handler's reply or, when
    anything fails, a structured error reply (``error_reply``), never a traceback. An
    unexpected exception is logged and answered as an internal error, unless
    ``failure`` maps it to another. ``observe`` is told each call's outcome and time.
    Dapr-free: the unit tests call it as daprd does, with the body and metadata."""

    def __init__(
        self,
        app_id: str,
        handlers: Mapping[contracts.Rpc[Any, Any], Handler],
        *,
        failure: Failure | None = None,
        observe: Observer | None = None,
    ) -> None:
        for rpc in handlers:  # a KeyError for a method the table does not give this app
            if contracts.rpc(app_id, rpc.name) is not rpc:
                raise KeyError(f"{rpc.name} is not a method of {app_id} in the contract table")
        self.app_id = app_id
        self.rpcs = {rpc.name: rpc for rpc in handlers}
        self.handlers = {rpc.name: handler for rpc, handler in handlers.items()}
        self.failure = failure
        self.observe = observe
        self._with_caller = {
            rpc.name for rpc, h in handlers.items() if "caller" in inspect.signature(h).parameters
        }

    def __call__(self, name: str, body: bytes, metadata: Mapping[str, Any] | None = None) -> str:
        rpc = self.rpcs[name]
        started = time.monotonic()
        request: BaseModel | None = None
        with server_span(name, grpc_carrier(metadata)):
            try:
                if rpc.request is not None:
                    request = parse(rpc.request, body)
                answer, outcome = self._run(rpc, request, metadata), "ok"
            except Exception as exc:
                error = self._error(name, exc)
                answer, outcome = error_reply(error), error.code
        if self.observe is not None:
            self.observe(name, request, outcome, time.monotonic() - started)
        return answer

    def _run(
        self,
        rpc: contracts.Rpc[Any, Any],
        request: BaseModel | None,
        metadata: Mapping[str, Any] | None,
    ) -> str:
        args = [] if request is None else [request]
        kwargs = {"caller": caller_app_id(metadata)} if rpc.name in self._with_caller else {}
        reply = self.handlers[rpc.name](*args, **kwargs)
        if rpc.reply is not None and not isinstance(reply, rpc.reply):
            raise TypeError(f"{rpc.name} replied {type(reply).__name__}, not {rpc.reply}")
        return reply.model_dump_json() if isinstance(reply, BaseModel) else json.dumps(reply)

    def _error(self, name: str, exc: Exception) -> AutoGLMError:
        if isinstance(exc, AutoGLMError):
            return exc
        mapped = self.failure(name, exc) if self.failure is not None else None
        if mapped is not None:
            return mapped
        log.exception("%s failed", name)
        return InternalError(f"{name} failed")


def serve(
    app: App,
    endpoint: Endpoint,
    topics: Mapping[contracts.Topic[Any], TopicHandler],
    bulk: Mapping[str, BulkConfig] | None = None,
) -> None:
    """Register ``endpoint``'s methods and the handlers of ``topics`` (each in a span
    named ``<topic> process``, answered as ``topic_response`` says) on ``app``; only
    what the contract table declares for the endpoint's app (else a KeyError). Topics
    in ``bulk`` are subscribed in bulk (``autoglm.core.bulk_delivery``: the app must be
    built with a ``BulkDelivery`` for their handlers)."""
    for name in endpoint.rpcs:
        method(app, endpoint.app_id, name)(functools.partial(_invoke, endpoint, name))
    for topic, handler in topics.items():
        deliver = functools.partial(_deliver, topic.name, handler)
        subscribe(app, endpoint.app_id, topic.name)(deliver)
        if bulk and topic.name in bulk:
            subscribe_in_bulk(app, topic.name, bulk[topic.name])


def _invoke(endpoint: Endpoint, name: str, request: InvokeMethodRequest) -> str:
    return endpoint(name, request.data, request.metadata)


def event_data(data: object) -> bytes:
    """A CloudEvent's ``data`` as bytes, whatever form the SDK handed it over in."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data).encode()


class RedeliverError(Exception):
    """Fails the delivery call: how a RETRY is answered. Under the subscription's
    resiliency policy daprd delivers the event again, with backoff, and once the policy's
    retries are spent moves it to the topic's dead-letter topic. (daprd 1.18.3 treats a
    RETRY status the same way; ``tests/integration/test_messaging.py`` pins both, so a
    change in either shows there. A failed call is the answer no daprd takes as done.)"""


def topic_response(ack: Ack) -> TopicEventResponse:
    """How a subscription handler answers daprd."""
    if ack is Ack.RETRY:
        raise RedeliverError("effect not durable yet; redeliver")
    return TopicEventResponse(ack.value)


def _deliver(topic: str, handler: TopicHandler, event: v1.Event) -> TopicEventResponse:
    with server_span(f"{topic} process", event_carrier(event)):
        return topic_response(handler(event_data(event.Data())))


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong app API token")

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return kind(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def callback_app(
    max_concurrent_calls: int,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    app_token: str | None = None,
) -> App:
    """A Dapr gRPC ``App`` that serves up to ``max_concurrent_calls`` calls at once, each
    only with the app API token (``app_token``, default ``APP_API_TOKEN``); the token is
    checked before ``interceptors`` run."""
    if max_concurrent_calls < 1:
        raise ValueError("max_concurrent_calls must be at least 1")
    token = app_token if app_token is not None else os.environ.get("APP_API_TOKEN")
    # Passing server arguments replaces the SDK's defaults, so keep its one option: the
    # inbound message limit from DAPR_GRPC_MAX_INBOUND_MESSAGE_SIZE_BYTES.
    limit = settings.DAPR_GRPC_MAX_INBOUND_MESSAGE_SIZE_BYTES
    return App(
        thread_pool=futures.ThreadPoolExecutor(
            max_workers=max_concurrent_calls, thread_name_prefix="dapr-callback"
        ),
        maximum_concurrent_rpcs=max_concurrent_calls,
        options=[("grpc.max_receive_message_length", limit)] if limit else [],
        interceptors=[RequireAppToken(token), *interceptors],
    )


#: The callback daprd makes at start to learn the app's subscriptions.
LIST_SUBSCRIPTIONS = "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions"


class RefuseFirstCalls(grpc.ServerInterceptor):  # type: ignore[misc]
    """Fault injection: answer the first ``count`` calls of ``method`` UNAVAILABLE, as an
    app that is not quite up yet does. The chaos tests use it on ``LIST_SUBSCRIPTIONS``
    to make daprd come up without the app's subscriptions."""

    def __init__(self, method: str, count: int) -> None:
        self.method = method
        self.left = count
        self._lock = threading.Lock()

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        if handler_call_details.method == self.method:
            with self._lock:
                refuse = self.left > 0
                self.left -= refuse
            if refuse:
                log.warning("fault injection: refusing a call", extra={"method": self.method})

                def abort(_request: Any, context: grpc.ServicerContext) -> None:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "fault injection: not ready")

                return grpc.unary_unary_rpc_method_handler(abort)
        return continuation(handler_call_details)


def run_until_stopped(app: App, port: int, host: str, grace_s: float) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM/SIGINT, then stop it gracefully:
    calls in flight get ``grace_s`` to finish (``stop_gracefully``)."""
    on_shutdown(functools.partial(stop_gracefully, app, grace_s))
    app.run(port, listen_address=host)


def stop_gracefully(app: App, grace_s: float) -> bool:
    """Refuse new calls at once, let those in flight finish for up to ``grace_s``
    seconds, then cancel the rest. Returns when the server has stopped (``app.run``
    returns then too), False if it did not within the grace and a margin."""
    stopped: bool = app._server.stop(grace_s).wait(grace_s + CANCEL_MARGIN_S)
    if not stopped:
        log.warning("gRPC server did not stop within its grace", extra={"grace_s": grace_s})
    return stopped
