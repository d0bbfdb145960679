"""Session affinity: inference hosts the Dapr actor type ``InferenceSession``.

One actor per chat session (its id a hash of tenant and session, see
``autoglm.core.affinity``). Dapr's placement service assigns every actor id to one
replica of the app id, so all the turns of a session reach the replica whose prefix
cache holds the session's earlier turns; when that replica leaves (stopped, killed),
placement moves its actors to the replicas left and the next turn lands on one of them.

The app hosts the type over the app-initiated stream ``SubscribeActorEventsAlpha1``
(daprd 1.18): it dials its own daprd's gRPC API, announces the actor type, then answers
the invocations daprd pushes to it. The stream needs no extra listener and no HTTP
server in the app. An actor method is the same work as the service-invocation method of
the same name (``generate``: same request and reply models, same tenant fair share and
limits, same error payloads); the actor keeps no state of its own. When the stream ends
(daprd restarted, or not up yet) the host dials again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures

import grpc
from dapr.proto.runtime.v1 import actors_pb2 as actors
from dapr.proto.runtime.v1 import dapr_pb2_grpc
from google.protobuf import duration_pb2

from autoglm.core.affinity import ACTOR_TYPE
from autoglm.core.callback_server import TOKEN_METADATA

log = logging.getLogger(__name__)

#: An actor method: request body and metadata in, the reply JSON out (errors as
#: payloads), as ``autoglm.core.callback_server.Endpoint`` answers a method.
Handler = Callable[[bytes, Mapping[str, str]], str]

_Request = actors.SubscribeActorEventsRequestAlpha1
_CLOSE = object()


class ActorHost:
    """Hosts ``ACTOR_TYPE`` for this replica over its daprd's actor event stream."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        dapr_grpc_address: str,
        api_token: str | None,
        max_workers: int,
        idle_timeout_s: float = 600.0,
        reconnect_s: float = 0.5,
        max_reconnect_s: float = 15.0,
    ) -> None:
        self.handlers = dict(handlers)
        self.address = dapr_grpc_address
        self.metadata = [(TOKEN_METADATA, api_token)] if api_token else []
        self.idle_timeout_s = idle_timeout_s
        self.reconnect_s = reconnect_s
        self.max_reconnect_s = max_reconnect_s
        self._pool = futures.ThreadPoolExecutor(max_workers, thread_name_prefix="actor")
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="actor-host", daemon=True)
        self._call: grpc.Future | None = None
        #: Set while a stream is registered with daprd (tests and readiness read it).
        self.registered = threading.Event()

    def start(self) -> ActorHost:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the stream (daprd hands this replica's actors to the others) and wait
        for invocations in flight up to ``timeout``."""
        self._stopped.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the stream ----------------------------------------------------------------------
    def _run(self) -> None:
        """Dial, serve until the stream ends, dial again: at once after a stream that
        was registered (daprd restarted), with backoff while daprd refuses (not up yet,
        or no actor runtime: no placement service configured)."""
        delay = self.reconnect_s
        last_reason = ""
        while not self._stopped.is_set():
            reason = "stream closed"
            try:
                self._serve_once()
            except grpc.RpcError as exc:
                reason = f"{exc.code()}: {exc.details()}"
            except Exception as exc:
                log.exception("actor stream failed")
                reason = repr(exc)
            if self._stopped.is_set():
                break
            if self.registered.is_set():
                delay = self.reconnect_s
            else:
                delay = min(delay * 2, self.max_reconnect_s)
            if reason != last_reason:
                log.info("actor stream ended; dialling again", extra={"reason": reason})
                last_reason = reason
            self.registered.clear()
            self._stopped.wait(delay)

    def _initial(self) -> _Request:
        idle = duration_pb2.Duration()
        idle.FromNanoseconds(int(self.idle_timeout_s * 1e9))
        return _Request(
            initial_request=actors.SubscribeActorEventsRequestInitialAlpha1(
                entities=[ACTOR_TYPE], actor_idle_timeout=idle
            )
        )

    def _serve_once(self) -> None:
        outbox: queue.Queue[object] = queue.Queue()
        outbox.put(self._initial())

        def requests() -> Iterator[_Request]:
            while True:
                item = outbox.get()
                if item is _CLOSE:
                    return
                assert isinstance(item, _Request)
                yield item

        with grpc.insecure_channel(self.address) as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)  # type: ignore[no-untyped-call]
            responses = stub.SubscribeActorEventsAlpha1(requests(), metadata=self.metadata)
            self._call = responses
            try:
                for message in responses:
                    kind = message.WhichOneof("response_type")
                    if kind == "initial_response":
                        self.registered.set()
                        log.info("actor type registered", extra={"actor_type": ACTOR_TYPE})
                    else:
                        self._pool.submit(self._dispatch, message, outbox.put)
            finally:
                outbox.put(_CLOSE)
                self._call = None

    # -- callbacks -----------------------------------------------------------------------
    def _dispatch(
        self, message: actors.SubscribeActorEventsResponseAlpha1, send: Callable[[object], None]
    ) -> None:
        try:
            send(self._answer(message))
        except Exception as exc:  # a handler bug: daprd gets a failure, not silence
            log.exception("actor callback failed")
            request_id = getattr(message, message.WhichOneof("response_type") or "").id
            send(_failed(request_id, grpc.StatusCode.INTERNAL, type(exc).__name__))

    def _answer(self, message: actors.SubscribeActorEventsResponseAlpha1) -> _Request:
        kind = message.WhichOneof("response_type")
        if kind == "invoke_request":
            req = message.invoke_request
            handler = self.handlers.get(req.method)
            if handler is None:
                return _failed(req.id, grpc.StatusCode.NOT_FOUND, f"no method {req.method!r}")
            reply = handler(req.data, dict(req.metadata))
            return _Request(
                invoke_response=actors.SubscribeActorEventsRequestInvokeResponseAlpha1(
                    id=req.id,
                    data=reply.encode(),
                    metadata={"content-type": "application/json"},
                )
            )
        if kind == "deactivate_request":
            return _Request(
                deactivate_response=actors.SubscribeActorEventsRequestDeactivateResponseAlpha1(
                    id=message.deactivate_request.id
                )
            )
        # No reminders or timers are ever registered; cancel any that fire.
        req_id = getattr(message, kind or "").id
        done = actors.SubscribeActorEventsRequestReminderResponseAlpha1(id=req_id, cancel=True)
        if kind == "timer_request":
            return _Request(timer_response=done)
        return _Request(reminder_response=done)


def _failed(request_id: str, code: grpc.StatusCode, text: str) -> _Request:
    return _Request(
        request_failed=actors.SubscribeActorEventsRequestFailedAlpha1(
            id=request_id, code=code.value[0], message=text
        )
    )
