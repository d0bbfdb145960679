"""How an app answers a pub/sub delivery; its gRPC edge (``autoglm.core.callback_server``)
maps it to Dapr's response."""

from __future__ import annotations

import enum


class Ack(enum.Enum):
    """``SUCCESS``: effect is durable. ``RETRY``: redeliver later (transient failure).
    ``DROP``: no redelivery can succeed; Dapr moves it to the dead-letter topic."""

    SUCCESS = "success"
    RETRY = "retry"
    DROP = "drop"
