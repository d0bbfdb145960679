"""The Dapr floor's callee: a trivial gRPC app built like ``inference`` (the Dapr SDK's
``App`` through ``autoglm.core.callback_server``: same thread pool shape, app-token
check) with two methods:

* ``echo`` returns its JSON body unchanged, at once;
* ``hold`` returns it too, but only after a worker thread has computed for the body's
  ``hold_ms`` (hashing, which releases the GIL like torch's kernels), while the call's
  thread waits for it on an event: the hand-off of inference's ``generate`` to its
  compute thread, without a model. A call that waits costs its daprds and its app more
  than one answered at once (threads and goroutines park and are woken again), so the
  floor of a callee that works as long as the engine's 1-token generation is this one.

``load/bench.py`` starts it behind its own daprd and calls it through a second daprd the
way the gateway calls inference (``Sidecar.invoke``: HTTP to the local daprd, service
invocation to the callee's daprd, gRPC to the app), and directly over gRPC, so the
difference is what two sidecars cost on this machine and nothing of ours.

    APP_PORT=50051 APP_API_TOKEN=... python -m load.echo_app
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from typing import Any

from autoglm.core.callback_server import callback_app

METHOD = "echo"
HOLD_METHOD = "hold"
#: The body's key of ``hold``: how long the worker computes before the call is answered.
HOLD_KEY = "hold_ms"
#: Hashed per round of the worker's computation: large enough that hashlib releases the
#: GIL while it hashes, small enough to end close to the asked time.
_CHUNK = b"\0" * 65536


def hold_seconds(body: bytes) -> float:
    """``hold_ms`` of a JSON object body, in seconds (0 when absent or not a positive
    number)."""
    try:
        value = json.loads(body).get(HOLD_KEY)
    except (ValueError, AttributeError):
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return 0.0
    return float(value) / 1000


def compute(seconds: float) -> None:
    """Busy the calling thread for ``seconds`` with hashing (the GIL released meanwhile)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        hashlib.sha256(_CHUNK).digest()


class Worker:
    """One compute thread, as the engine's: calls hand it their work and wait."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[float, threading.Event]] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="echo-worker", daemon=True).start()

    def _run(self) -> None:
        while True:
            seconds, done = self._jobs.get()
            compute(seconds)
            done.set()

    def run(self, seconds: float) -> None:
        done = threading.Event()
        self._jobs.put((seconds, done))
        done.wait()


def main() -> None:
    app = callback_app(32)
    worker = Worker()

    @app.method(METHOD)  # type: ignore[misc]
    def echo(request: Any) -> bytes:
        return bytes(request.data)

    @app.method(HOLD_METHOD)  # type: ignore[misc]
    def hold(request: Any) -> bytes:
        body = bytes(request.data)
        worker.run(hold_seconds(body))
        return body

    app.run(int(os.environ["APP_PORT"]))


def direct_caller(port: int, app_token: str, method: str = METHOD) -> Any:
    """A callable ``body bytes -> reply bytes`` that calls ``method`` on the app's own
    port over gRPC, as its daprd does (``AppCallback.OnInvoke``), without any sidecar."""
    import grpc
    from dapr.proto import appcallback_service_v1, common_v1
    from google.protobuf.any_pb2 import Any as AnyPb

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = appcallback_service_v1.AppCallbackStub(channel)
    metadata = (("dapr-api-token", app_token),)

    def call(body: bytes) -> bytes:
        req = common_v1.InvokeRequest(
            method=method, data=AnyPb(value=body), content_type="application/json"
        )
        return bytes(stub.OnInvoke(req, metadata=metadata, timeout=30).data.value)

    call.close = channel.close  # type: ignore[attr-defined]
    return call


if __name__ == "__main__":
    main()
