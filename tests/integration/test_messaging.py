"""Inference's pub/sub handler publishes through real daprd into the real Redis stream."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from autoglm.core.pubsub import Ack
from autoglm.core.sidecar import Sidecar
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.serving import InferenceService
from tests.support.stack import Backing


def test_result_lands_on_reply_topic_stream(
    sidecar: Sidecar, backing: Backing, demo_model_dir: Path
) -> None:
    # The reply topic must be one the pub/sub scopes allow (the contract table).
    topic = "inference.results"
    request_id = f"req-{uuid.uuid4().hex}"
    service = InferenceService(AutoGLMEngine(demo_model_dir, model_id="demo-glm"), sidecar)
    body = json.dumps(
        {
            "request_id": request_id,
            "reply_topic": topic,
            "request": {"prompt": "hello", "sampling": {"max_tokens": 3}},
        }
    )
    assert service.on_request_event(body.encode()) is Ack.SUCCESS

    entries = [
        e for e in backing.redis_client().xrange(topic) if request_id.encode() in e[1][b"data"]
    ]
    assert len(entries) == 1
    cloud_event = json.loads(entries[0][1][b"data"])
    assert cloud_event["data"]["request_id"] == request_id
    assert cloud_event["data"]["result"]["completion_tokens"] >= 1
