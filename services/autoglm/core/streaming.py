"""Streaming generation across the mesh over Dapr's gRPC proxying.

Dapr service invocation is request/response, but daprd proxies any gRPC call that carries
``dapr-app-id`` metadata, server streaming included. ``inference`` serves the method below;
callers open a channel to their own sidecar's gRPC port. Frames are JSON (no protobuf
codegen needed): ``{"delta": str}`` while decoding, then ``{"result": {...}}`` or
``{"error": {...}}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import grpc

from autoglm.core.errors import AutoGLMError, DeadlineExceededError, UnavailableError

STREAM_SERVICE = "autoglm.inference.v1.Inference"
STREAM_METHOD = "GenerateStream"


def stream_generate(
    payload: dict[str, Any],
    app_id: str = "inference",
    grpc_port: int | None = None,
    timeout: float = 300.0,
) -> Iterator[dict[str, Any]]:
    """Yield frames from ``app_id``'s stream via the local sidecar; errors are raised."""
    port = grpc_port or int(os.environ.get("DAPR_GRPC_PORT", "50001"))
    metadata = [("dapr-app-id", app_id)]
    token = os.environ.get("DAPR_API_TOKEN")
    if token:
        metadata.append(("dapr-api-token", token))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(f"/{STREAM_SERVICE}/{STREAM_METHOD}")
        frames = call(json.dumps(payload).encode(), metadata=metadata, timeout=timeout)
        try:
            for raw in frames:
                frame = json.loads(raw)
                if "error" in frame:
                    raise AutoGLMError.from_payload(frame["error"])
                yield frame
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceededError("stream timed out") from None
            raise UnavailableError(f"stream from {app_id} failed: {code}") from None
        finally:
            frames.cancel()
