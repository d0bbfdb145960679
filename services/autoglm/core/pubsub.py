"""How an app answers a pub/sub delivery; the edges map it to Dapr's response status."""

from __future__ import annotations

import enum
import json

from dapr.clients.grpc._response import TopicEventResponse


class Ack(enum.Enum):
    """``SUCCESS``: effect is durable. ``RETRY``: redeliver later (transient failure).
    ``DROP``: no redelivery can succeed; Dapr moves it to the dead-letter topic."""

    SUCCESS = "success"
    RETRY = "retry"
    DROP = "drop"


def event_data(data: object) -> bytes:
    """A CloudEvent's ``data`` as bytes, whatever form the SDK handed it over in."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data).encode()


class RedeliverError(Exception):
    """Fails the delivery call so the broker keeps the message pending.

    daprd 1.18 acknowledges a gRPC app's RETRY status (it hands the component a retriable
    error with a nil cause, which counts as success), so RETRY is answered with a failed
    call instead; daprd's resiliency retries it, and Redis redelivers it after the
    pub/sub component's ``processingTimeout``."""


def topic_response(ack: Ack) -> TopicEventResponse:
    """How a gRPC app's subscription handler answers daprd."""
    if ack is Ack.RETRY:
        raise RedeliverError("effect not durable yet; redeliver")
    return TopicEventResponse(ack.value)
