"""Server-sent events as the OpenAI streaming API writes them."""

from __future__ import annotations

import json
from typing import Any

from autoglm.core.errors import AutoGLMError

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def named_event(kind: str, payload: dict[str, Any]) -> bytes:
    """An event with an ``event:`` line, as the Responses API streams them."""
    return b"event: " + kind.encode() + b"\n" + event(payload)


def error_event(exc: AutoGLMError) -> bytes:
    """A failure after the 200 header went out: the OpenAI clients raise on it."""
    payload = exc.to_payload()
    payload.pop("status")
    return event({"error": payload})
