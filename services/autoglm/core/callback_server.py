"""The gRPC server daprd calls back into, sized for the work the app takes at once.

``dapr.ext.grpc.App()`` defaults to a pool of 10 threads. Every unary call and every
server stream holds one thread until it returns, so with the default an app that
batches 32 generations sees at most 10 of them, and ten long streams starve even
health checks. The pool is sized from the app's own concurrency limits instead, and
``maximum_concurrent_rpcs`` makes gRPC refuse (RESOURCE_EXHAUSTED) what exceeds it
rather than queueing it without bound.
"""

from __future__ import annotations

from concurrent import futures

from dapr.conf import settings
from dapr.ext.grpc import App


def callback_app(max_concurrent_calls: int) -> App:
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
    )
