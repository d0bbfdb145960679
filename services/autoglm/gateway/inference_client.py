"""The gateway's one way to reach ``inference``: typed calls through the contract table
(``autoglm.core.contracts``), the gRPC stream proxied by daprd, and a session's actor
(session affinity: ``generate`` of a turn that names a session). Routes never build
invocation payloads themselves."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from autoglm.core.affinity import ACTOR_TYPE, session_actor_id
from autoglm.core.contracts import (
    CANCEL,
    EMBED,
    GENERATE,
    INFERENCE,
    LOAD_MODEL,
    MODELS,
    UNLOAD_MODEL,
    MeshClient,
)
from autoglm.core.errors import UnavailableError
from autoglm.core.schemas import (
    CancelRequest,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    ModelRef,
    ModelState,
    parse,
)
from autoglm.core.sidecar import ActorAPI
from autoglm.core.streaming import stream_generate

log = logging.getLogger(__name__)

#: ``(payload, app_id, timeout)`` → frames; the default goes through the local daprd.
StreamFn = Callable[[dict[str, Any], str, float], Iterator[dict[str, Any]]]

#: How long listing the models may take (a probe of ``/readyz`` uses it too).
MODELS_TIMEOUT_S = 10.0


def _sidecar_stream(
    payload: dict[str, Any], app_id: str, timeout: float
) -> Iterator[dict[str, Any]]:
    return stream_generate(payload, app_id=app_id, timeout=timeout)


@dataclass
class InferenceClient:
    mesh: MeshClient
    timeout_s: float
    stream_fn: StreamFn = _sidecar_stream
    #: Where session actors are invoked (``None``: no affinity, plain invocation).
    actors: ActorAPI | None = None

    @property
    def app_id(self) -> str:
        return self.mesh.app_ids.get(INFERENCE, INFERENCE)

    def generate(self, request: GenerateRequest, session: str | None = None) -> GenerateResult:
        """One generation. With ``session`` it runs on the replica that holds the
        session's actor (whose prefix cache has its earlier turns); when the actor
        cannot be reached it falls back to plain service invocation (any replica)."""
        if session and self.actors is not None:
            actor_id = session_actor_id(request.tenant, session)
            try:
                reply = self.actors.invoke_actor(
                    ACTOR_TYPE,
                    actor_id,
                    GENERATE.name,
                    request.model_dump(mode="json"),
                    timeout=self.timeout_s,
                )
                return parse(GenerateResult, reply)
            except UnavailableError as exc:
                if exc.code != "actor_unavailable":
                    raise
                log.warning(
                    "session actor unavailable; any replica serves this turn",
                    extra={"actor_id": actor_id, "reason": exc.message},
                )
        return self.mesh.call(GENERATE, request, timeout=self.timeout_s)

    def stream(self, request: GenerateRequest) -> Iterator[dict[str, Any]]:
        """Frames ``{"delta": str}`` then one ``{"result": ...}``; closing the iterator
        cancels the generation upstream."""
        return self.stream_fn(request.model_dump(mode="json"), self.app_id, self.timeout_s)

    def cancel(self, request_id: str) -> None:
        """Cancel a request sent through ``inference.requests`` (whichever replica runs it)."""
        self.mesh.call(CANCEL, CancelRequest(request_id=request_id), timeout=self.timeout_s)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        return self.mesh.call(EMBED, request, timeout=self.timeout_s)

    def models(self, timeout: float = MODELS_TIMEOUT_S) -> list[dict[str, Any]]:
        return self.mesh.call(MODELS, timeout=timeout).data

    def manage(self, action: str, model: str) -> ModelState:
        """``load`` / ``unload`` (inference allows them only from the gateway)."""
        method = LOAD_MODEL if action == "load" else UNLOAD_MODEL
        return self.mesh.call(method, ModelRef(model=model), timeout=self.timeout_s)
