"""Inference's handlers for Dapr invocation and pub/sub, free of Dapr types.

Each handler takes the raw request bytes and returns what the edge sends back, so the
logic is unit-tested with a fake sidecar. Failures are structured error payloads, never
tracebacks.
"""

from __future__ import annotations

import json
import logging

from autoglm.core.errors import AutoGLMError, InternalError, InvalidRequestError
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import (
    GenerateRequest,
    InferenceRequestEvent,
    InferenceResultEvent,
    parse,
)
from autoglm.core.sidecar import SidecarAPI, error_reply
from autoglm.inference.engine import AutoGLMEngine

log = logging.getLogger(__name__)


class InferenceService:
    def __init__(self, engine: AutoGLMEngine, sidecar: SidecarAPI) -> None:
        self.engine = engine
        self.sidecar = sidecar

    def generate(self, body: bytes) -> str:
        try:
            request = parse(GenerateRequest, body)
            return self.engine.generate(request).model_dump_json()
        except AutoGLMError as exc:
            return error_reply(exc)
        except Exception:
            log.exception("generate failed")
            return error_reply(InternalError("generation failed"))

    def models(self, _body: bytes) -> str:
        return json.dumps({"data": self.engine.models()})

    def on_request_event(self, body: bytes) -> Ack:
        """Handle one ``inference.requests`` message; publish its result to its reply topic.

        Invalid messages cannot succeed on redelivery, so they are dropped (Dapr then routes
        them to the dead-letter topic). The message is acknowledged only once the result is
        published: if publishing fails, Dapr redelivers.
        """
        try:
            event = parse(InferenceRequestEvent, body)
        except InvalidRequestError as exc:
            log.warning("invalid inference request dropped", extra={"reason": exc.message})
            return Ack.DROP
        try:
            outcome = InferenceResultEvent(
                request_id=event.request_id, result=self.engine.generate(event.request)
            )
        except AutoGLMError as exc:
            outcome = InferenceResultEvent(request_id=event.request_id, error=exc.to_payload())
        except Exception:
            log.exception("generation failed", extra={"request_id": event.request_id})
            err = InternalError("generation failed")
            outcome = InferenceResultEvent(request_id=event.request_id, error=err.to_payload())
        try:
            self.sidecar.publish(event.reply_topic, outcome.model_dump(mode="json"))
        except AutoGLMError as exc:
            log.error(
                "result not published; will be redelivered",
                extra={"request_id": event.request_id, "reason": exc.message},
            )
            return Ack.RETRY
        return Ack.SUCCESS
