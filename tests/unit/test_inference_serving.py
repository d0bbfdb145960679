from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.core.errors import UnavailableError
from autoglm.core.pubsub import Ack
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.serving import InferenceService
from tests.support.fakes import FakeSidecar


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> AutoGLMEngine:
    return AutoGLMEngine(demo_model_dir, model_id="demo-glm")


def _event(**over: object) -> bytes:
    event = {
        "request_id": "job-1",
        "reply_topic": "replies",
        "request": {"prompt": "hi", "sampling": {"max_tokens": 4, "temperature": 0}},
    }
    event.update(over)
    return json.dumps(event).encode()


def test_request_event_publishes_result_with_same_id(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    assert InferenceService(engine, sidecar).on_request_event(_event()) is Ack.SUCCESS
    [(topic, payload)] = sidecar.published
    assert topic == "replies"
    assert payload["request_id"] == "job-1"
    assert payload["result"]["request_id"] == "job-1"
    assert payload["result"]["completion_tokens"] >= 1


def test_failed_generation_yields_error_result(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    body = _event(request={"model": "missing", "prompt": "x"})
    assert InferenceService(engine, sidecar).on_request_event(body) is Ack.SUCCESS
    [(_, payload)] = sidecar.published
    assert payload["result"] is None
    assert payload["error"]["status"] == 404


def test_poison_message_is_dropped_not_published(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    assert InferenceService(engine, sidecar).on_request_event(b"\xff garbage") is Ack.DROP
    assert sidecar.published == []


def test_publish_failure_asks_for_redelivery(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    sidecar.fail_publish = UnavailableError("broker down")
    assert InferenceService(engine, sidecar).on_request_event(_event()) is Ack.RETRY


def test_generate_returns_structured_error_not_traceback(engine: AutoGLMEngine) -> None:
    reply = json.loads(InferenceService(engine, FakeSidecar()).generate(b'{"prompt": 5}'))
    assert reply["error"]["status"] == 400 and reply["error"]["param"] == "prompt"
    assert "Traceback" not in json.dumps(reply)


def test_duplicate_delivery_publishes_once(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    service = InferenceService(engine, sidecar)
    assert service.on_request_event(_event()) is Ack.SUCCESS
    assert service.on_request_event(_event()) is Ack.SUCCESS
    assert len(sidecar.published) == 1
    assert "idempotency:inference:job-1" in sidecar.state


def test_admin_methods_only_for_allowed_callers(engine: AutoGLMEngine) -> None:
    service = InferenceService(engine, FakeSidecar(), admin_callers=("gateway",))
    denied = json.loads(service.unload_model(b'{"model": "demo-glm"}', "archiver"))
    assert denied["error"]["status"] == 403 and "archiver" in denied["error"]["message"]
    ok = json.loads(service.load_model(b'{"model": "demo-glm"}', "gateway"))
    assert ok == {"model": "demo-glm", "state": "ready"}


def test_stream_frames_end_with_result(engine: AutoGLMEngine) -> None:
    service = InferenceService(engine, FakeSidecar())
    body = json.dumps({"prompt": "hi", "sampling": {"max_tokens": 6, "temperature": 0}})
    frames = [json.loads(f) for f in service.stream(body.encode())]
    assert "result" in frames[-1]
    text = "".join(f["delta"] for f in frames[:-1])
    assert text == frames[-1]["result"]["text"]


def test_stream_of_bad_request_is_one_error_frame(engine: AutoGLMEngine) -> None:
    frames = list(InferenceService(engine, FakeSidecar()).stream(b'{"prompt": 1}'))
    assert len(frames) == 1 and json.loads(frames[0])["error"]["status"] == 400
