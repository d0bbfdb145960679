"""How an app answers a pub/sub delivery; the edges map it to Dapr's response status."""

from __future__ import annotations

import enum
import json


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
