"""The gateway's one way to reach ``inference``: Dapr service invocation and the
gRPC stream proxied by daprd. Routes never build invocation payloads themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from autoglm.core.schemas import (
    CancelRequest,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    parse,
)
from autoglm.core.sidecar import SidecarAPI
from autoglm.core.streaming import stream_generate

#: ``(payload, app_id, timeout)`` → frames; the default goes through the local daprd.
StreamFn = Callable[[dict[str, Any], str, float], Iterator[dict[str, Any]]]


def _sidecar_stream(
    payload: dict[str, Any], app_id: str, timeout: float
) -> Iterator[dict[str, Any]]:
    return stream_generate(payload, app_id=app_id, timeout=timeout)


class InferenceClient:
    def __init__(
        self,
        sidecar: SidecarAPI,
        *,
        app_id: str,
        timeout_s: float,
        stream_fn: StreamFn = _sidecar_stream,
    ) -> None:
        self.sidecar = sidecar
        self.app_id = app_id
        self.timeout_s = timeout_s
        self._stream_fn = stream_fn

    def generate(self, request: GenerateRequest) -> GenerateResult:
        reply = self.sidecar.invoke(
            self.app_id, "generate", request.model_dump(mode="json"), timeout=self.timeout_s
        )
        return parse(GenerateResult, reply)

    def stream(self, request: GenerateRequest) -> Iterator[dict[str, Any]]:
        """Frames ``{"delta": str}`` then one ``{"result": ...}``; closing the iterator
        cancels the generation upstream."""
        return self._stream_fn(request.model_dump(mode="json"), self.app_id, self.timeout_s)

    def cancel(self, request_id: str) -> None:
        """Cancel a request sent through ``inference.requests`` (whichever replica runs it)."""
        body = CancelRequest(request_id=request_id).model_dump(mode="json")
        self.sidecar.invoke(self.app_id, "cancel", body, timeout=self.timeout_s)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        reply = self.sidecar.invoke(
            self.app_id, "embed", request.model_dump(mode="json"), timeout=self.timeout_s
        )
        return parse(EmbedResult, reply)

    def models(self) -> list[dict[str, Any]]:
        reply = self.sidecar.invoke(self.app_id, "models", {}, timeout=10)
        return list(reply.get("data", []))

    def manage(self, method: str, model: str) -> dict[str, Any]:
        """``load_model`` / ``unload_model`` (inference allows them only from the gateway)."""
        return self.sidecar.invoke(self.app_id, method, {"model": model}, timeout=self.timeout_s)
