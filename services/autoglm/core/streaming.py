"""Streaming generation across the mesh over Dapr's gRPC proxying.

Dapr service invocation is request/response, but daprd proxies any gRPC call that carries
``dapr-app-id`` metadata, server streaming included. ``inference`` serves the method below;
callers open a channel to their own sidecar's gRPC port. Frames are JSON (no protobuf
codegen needed): ``{"delta": str}`` while decoding, then ``{"result": {...}}`` or
``{"error": {...}}``.

**Stopping a stream without failing it.** daprd (1.18) proxies a call that lacks the
``dapr-stream`` metadata as one operation of the resiliency policy of the target app:
the circuit breaker counts the call's final gRPC status, and *any* non-OK status is a
failure, CANCELLED included. A caller that simply cancels when its client hangs up
therefore trips the breaker for every tenant. (With ``dapr-stream: true`` the policy
would only cover opening the stream, and a dead or failing inference would never trip
it at all.) So the caller does not cancel: it announces ``autoglm-stream-stop:
half-close`` and, to stop, half-closes its side of the call (the method is bidirectional
for that alone: one request message, then nothing). Inference then cancels the
generation, sends its last frame and ends the call with OK, which daprd counts as a
success. Only a real failure (the app unreachable, a crash, a deadline) ends non-OK
and counts. Errors in the request (4xx) travel as ``{"error": ...}`` frames under OK.
A caller without the metadata (a plain server-streaming client) is served as before.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from autoglm.core.errors import AutoGLMError, DeadlineExceededError, UnavailableError

STREAM_SERVICE = "autoglm.inference.v1.Inference"
STREAM_METHOD = "GenerateStream"
#: Metadata announcing that the caller's half-close means "stop generating".
STOP_METADATA = "autoglm-stream-stop"
STOP_ON_HALF_CLOSE = "half-close"
#: How long a caller that stopped reading waits for the stream to end with OK before
#: it cancels (which the circuit breaker then counts).
STOP_GRACE_S = 10.0


def stream_generate(
    payload: dict[str, Any],
    app_id: str = "inference",
    grpc_port: int | None = None,
    timeout: float = 300.0,
    api_token: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield frames from ``app_id``'s stream via the local sidecar; errors are raised.

    Closing the iterator early (the client left, the content filter cut the text)
    stops the generation gracefully: see the module docstring. ``api_token``: the
    sidecar's Dapr API token (default ``DAPR_API_TOKEN``)."""
    port = grpc_port or int(os.environ.get("DAPR_GRPC_PORT", "50001"))
    metadata = [("dapr-app-id", app_id), (STOP_METADATA, STOP_ON_HALF_CLOSE)]
    token = api_token or os.environ.get("DAPR_API_TOKEN")
    if token:
        metadata.append(("dapr-api-token", token))
    stop = threading.Event()

    def requests() -> Iterator[bytes]:
        yield json.dumps(payload).encode()
        stop.wait()  # the request side stays open until the caller stops

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(f"/{STREAM_SERVICE}/{STREAM_METHOD}")
        frames = call(requests(), metadata=metadata, timeout=timeout)
        ended = False
        try:
            for raw in frames:
                frame = json.loads(raw)
                if "error" in frame:
                    # The last frame; the call's OK status follows (drained below).
                    raise AutoGLMError.from_payload(frame["error"])
                yield frame
            ended = True
        except grpc.RpcError as exc:
            ended = True
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceededError("stream timed out") from None
            raise UnavailableError(f"stream from {app_id} failed: {code}") from None
        finally:
            stop.set()  # half-close: inference stops, sends its last frame, ends with OK
            if not ended:
                _drain(frames)


def _drain(frames: Any) -> None:
    """Read what inference sends after the half-close until it ends the call (OK), for
    at most ``STOP_GRACE_S``; past that, cancel."""
    timer = threading.Timer(STOP_GRACE_S, frames.cancel)
    timer.daemon = True
    timer.start()
    try:
        for _ in frames:
            pass
    except grpc.RpcError:
        pass
    finally:
        timer.cancel()
