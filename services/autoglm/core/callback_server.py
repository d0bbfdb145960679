"""The gRPC server daprd calls back into, sized for the work the app takes at once.

``dapr.ext.grpc.App()`` defaults to a pool of 10 threads. Every unary call and every
server stream holds one thread until it returns, so with the default an app that
batches 32 generations sees at most 10 of them, and ten long streams starve even
health checks. The pool is sized from the app's own concurrency limits instead, and
``maximum_concurrent_rpcs`` makes gRPC refuse (RESOURCE_EXHAUSTED) what exceeds it
rather than queueing it without bound.

``App.stop()`` stops the server with no grace, aborting calls in flight (an upload, a
restore, a generation); ``stop_gracefully`` lets them finish first, within a bound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from dapr.conf import settings
from dapr.ext.grpc import App

log = logging.getLogger(__name__)

#: After the grace, gRPC cancels the calls left; allow it this long to finish doing so.
CANCEL_MARGIN_S = 5.0


def callback_app(
    max_concurrent_calls: int, interceptors: Sequence[grpc.ServerInterceptor] = ()
) -> App:
    """A Dapr gRPC ``App`` that serves up to ``max_concurrent_calls`` calls at once."""
    if max_concurrent_calls < 1:
        raise ValueError("max_concurrent_calls must be at least 1")
    # Passing server arguments replaces the SDK's defaults, so keep its one option: the
    # inbound message limit from DAPR_GRPC_MAX_INBOUND_MESSAGE_SIZE_BYTES.
    limit = settings.DAPR_GRPC_MAX_INBOUND_MESSAGE_SIZE_BYTES
    return App(
        thread_pool=futures.ThreadPoolExecutor(
            max_workers=max_concurrent_calls, thread_name_prefix="dapr-callback"
        ),
        maximum_concurrent_rpcs=max_concurrent_calls,
        options=[("grpc.max_receive_message_length", limit)] if limit else [],
        interceptors=list(interceptors),
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


def stop_gracefully(app: App, grace_s: float) -> bool:
    """Refuse new calls at once, let those in flight finish for up to ``grace_s``
    seconds, then cancel the rest. Returns when the server has stopped (``app.run``
    returns then too), False if it did not within the grace and a margin."""
    stopped: bool = app._server.stop(grace_s).wait(grace_s + CANCEL_MARGIN_S)
    if not stopped:
        log.warning("gRPC server did not stop within its grace", extra={"grace_s": grace_s})
    return stopped
