"""The Dapr floor's callee: a trivial gRPC app built like ``inference`` (the Dapr SDK's
``App`` through ``autoglm.core.callback_server``: same thread pool shape, app-token
check) with one method, ``echo``, that returns its JSON body unchanged.

``load/bench.py`` starts it behind its own daprd and calls it through a second daprd the
way the gateway calls inference (``Sidecar.invoke``: HTTP to the local daprd, service
invocation to the callee's daprd, gRPC to the app), and directly over gRPC, so the
difference is what two sidecars cost on this machine and nothing of ours.

    APP_PORT=50051 APP_API_TOKEN=... python -m load.echo_app
"""

from __future__ import annotations

import os
from typing import Any

from autoglm.core.callback_server import callback_app

METHOD = "echo"


def main() -> None:
    app = callback_app(32)

    @app.method(METHOD)  # type: ignore[misc]
    def echo(request: Any) -> bytes:
        return bytes(request.data)

    app.run(int(os.environ["APP_PORT"]))


def direct_caller(port: int, app_token: str) -> Any:
    """A callable ``body bytes -> reply bytes`` that calls ``echo`` on the app's own
    port over gRPC, as its daprd does (``AppCallback.OnInvoke``), without any sidecar."""
    import grpc
    from dapr.proto import appcallback_service_v1, common_v1
    from google.protobuf.any_pb2 import Any as AnyPb

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = appcallback_service_v1.AppCallbackStub(channel)
    metadata = (("dapr-api-token", app_token),)

    def call(body: bytes) -> bytes:
        req = common_v1.InvokeRequest(
            method=METHOD, data=AnyPb(value=body), content_type="application/json"
        )
        return bytes(stub.OnInvoke(req, metadata=metadata, timeout=30).data.value)

    call.close = channel.close  # type: ignore[attr-defined]
    return call


if __name__ == "__main__":
    main()
