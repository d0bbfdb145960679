from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autoglm.core.errors import OverloadedError, UnavailableError
from autoglm.core.pubsub import Ack
from autoglm.inference.app import endpoint
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.serving import InferenceService
from tests.support.fakes import FakeSidecar


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> AutoGLMEngine:
    return AutoGLMEngine(demo_model_dir, model_id="demo-glm")


def invoke(service: InferenceService, method: str, body: bytes, caller: str = "gateway") -> Any:
    """Call ``method`` as daprd does: through the endpoint the contract table builds."""
    return json.loads(endpoint(service)(method, body, {"dapr-caller-app-id": [caller]}))


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
    reply = invoke(InferenceService(engine, FakeSidecar()), "generate", b'{"prompt": 5}')
    assert reply["error"]["status"] == 400 and reply["error"]["param"] == "prompt"
    assert "Traceback" not in json.dumps(reply)


def test_duplicate_delivery_publishes_once(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    service = InferenceService(engine, sidecar)
    assert service.on_request_event(_event()) is Ack.SUCCESS
    assert service.on_request_event(_event()) is Ack.SUCCESS
    assert len(sidecar.published) == 1
    assert "idempotency:inference:job-1" in sidecar.state


def test_delivery_while_another_holds_the_claim_is_retried_not_generated(
    engine: AutoGLMEngine,
) -> None:
    """Two deliveries of one request at once (a redelivery past processingTimeout, a
    client publishing twice) generate it once: the second comes back later."""
    sidecar = FakeSidecar()
    sidecar.state["idempotency:inference:job-1"] = ({"state": "claimed"}, 1)
    assert InferenceService(engine, sidecar).on_request_event(_event()) is Ack.RETRY
    assert sidecar.published == []
    # The claim lapsed (its holder crashed): the next delivery does the work.
    del sidecar.state["idempotency:inference:job-1"]
    assert InferenceService(engine, sidecar).on_request_event(_event()) is Ack.SUCCESS
    assert len(sidecar.published) == 1
    assert sidecar.state["idempotency:inference:job-1"][0]["state"] == "published"


def test_claim_is_renewed_while_generating(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    saves: list[tuple[str, object, int | None]] = []
    real_save = sidecar.save_state

    def recording_save(key: str, value: object, *args: object, **kw: object) -> None:
        saves.append((key, value, kw.get("ttl_s")))  # type: ignore[arg-type]
        real_save(key, value, *args, **kw)  # type: ignore[arg-type]

    sidecar.save_state = recording_save  # type: ignore[method-assign]
    # Renewed every 10 ms here, so a generation of 40 tokens renews it several times.
    service = InferenceService(engine, sidecar, claim_ttl_s=0.03)
    body = _event(request={"prompt": "hi", "sampling": {"max_tokens": 40, "temperature": 0}})
    assert service.on_request_event(body) is Ack.SUCCESS
    states = [value["state"] for _, value, _ in saves]  # type: ignore[index]
    assert states[0] == "claimed" and states[-1] == "published"
    assert states.count("claimed") >= 3, states
    assert saves[0][2] == 1  # the claim lapses on its own if this process dies


def test_overloaded_engine_asks_for_redelivery_and_frees_the_claim(
    engine: AutoGLMEngine,
) -> None:
    sidecar = FakeSidecar()
    service = InferenceService(engine, sidecar)

    def full(*_a: object, **_k: object) -> object:
        raise OverloadedError("inference queue is full")

    service.engine = type("Full", (), {"submit": full, "request_timeout_s": 1})()  # type: ignore[assignment]
    assert service.on_request_event(_event()) is Ack.RETRY
    assert sidecar.published == [] and "idempotency:inference:job-1" not in sidecar.state


@pytest.mark.parametrize(
    "topic", ["audit", "session.snapshots", "inference.requests", "x.deadletter", "../x", ""]
)
def test_results_never_go_to_internal_topics(engine: AutoGLMEngine, topic: str) -> None:
    sidecar = FakeSidecar()
    assert InferenceService(engine, sidecar).on_request_event(_event(reply_topic=topic)) is Ack.DROP
    assert sidecar.published == []


def test_record_of_an_earlier_release_still_marks_a_duplicate(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    sidecar.state["idempotency:inference:job-1"] = ({"published": 1700000000.0}, 1)
    assert InferenceService(engine, sidecar).on_request_event(_event()) is Ack.SUCCESS
    assert sidecar.published == []


def test_admin_methods_only_for_allowed_callers(engine: AutoGLMEngine) -> None:
    service = InferenceService(engine, FakeSidecar(), admin_callers=("gateway",))
    denied = invoke(service, "unload_model", b'{"model": "demo-glm"}', "archiver")
    assert denied["error"]["status"] == 403 and "archiver" in denied["error"]["message"]
    ok = invoke(service, "load_model", b'{"model": "demo-glm"}', "gateway")
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


def test_priority_model_unload_is_refused_and_health_stays_ready(engine: AutoGLMEngine) -> None:
    service = InferenceService(engine, FakeSidecar())
    reply = invoke(service, "unload_model", b'{"model": "demo-glm"}', "gateway")
    assert reply["error"]["status"] == 409 and reply["error"]["code"] == "priority_model"
    assert "priority model" in reply["error"]["message"]
    assert service.health()["ready"] is True


def test_embed_metrics_are_labelled_with_the_embedding_model(models_dir: Path) -> None:
    from autoglm.inference.registry import ModelSpec

    eng = AutoGLMEngine(
        models=[
            ModelSpec("demo-glm", models_dir / "demo-glm", priority=True),
            ModelSpec("minilm", models_dir / "all-MiniLM-L6-v2"),
        ],
        warmup=False,
    )
    try:
        service = InferenceService(eng, FakeSidecar())
        assert "data" in invoke(service, "embed", b'{"input": ["hello"]}')
        invoke(service, "embed", b'{"input": ["hello"], "model": "no-such-model"}')
        value = service.metrics.registry.get_sample_value
        ok = {"model": "minilm", "method": "embed", "outcome": "ok"}
        assert value("autoglm_requests_total", ok) == 1
        assert (
            value("autoglm_request_latency_seconds_count", {"model": "minilm", "method": "embed"})
            == 1
        )
        assert value("autoglm_requests_total", {**ok, "model": "demo-glm"}) is None
        # A name the client made up is not a label of its own.
        missing = {"model": "unknown", "method": "embed", "outcome": "not_found"}
        assert value("autoglm_requests_total", missing) == 1
    finally:
        eng.close()


def test_resident_memory_is_current_not_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    import autoglm.inference.metrics as metrics_module
    from autoglm.inference.metrics import InferenceMetrics

    value = InferenceMetrics().registry.get_sample_value
    block = bytearray(256 * 2**20)  # touched, then freed: the peak keeps it, RSS does not
    for i in range(0, len(block), 4096):
        block[i] = 1
    del block
    current = value("autoglm_process_resident_memory_bytes")
    peak = value("autoglm_process_max_rss_bytes")
    assert current is not None and peak is not None
    assert 0 < current <= peak - 128 * 2**20

    def no_proc(*_a: object, **_k: object) -> object:
        raise FileNotFoundError("/proc/self/statm")

    monkeypatch.setattr(metrics_module, "open", no_proc, raising=False)
    assert metrics_module.resident_memory_bytes() == metrics_module.max_rss_bytes()


def test_cancel_before_delivery_skips_the_generation(engine: AutoGLMEngine) -> None:
    sidecar = FakeSidecar()
    service = InferenceService(engine, sidecar)
    reply = invoke(service, "cancel", b'{"request_id": "job-1"}')
    assert reply == {"request_id": "job-1", "cancelled": True}
    assert service.on_request_event(_event()) is Ack.SUCCESS
    assert sidecar.published == []  # nothing generated, nothing published
    assert sidecar.state["idempotency:inference:job-1"][0]["state"] == "cancelled"


def test_cancel_recorded_elsewhere_stops_a_running_generation(engine: AutoGLMEngine) -> None:
    """Another replica took the cancel: this one finds it in the state store while it
    generates, cancels, and frees the slot; the result says cancelled."""
    sidecar = FakeSidecar()
    service = InferenceService(engine, sidecar, cancel_poll_s=0.01)
    polls = 0

    def get_state(key: str, store: str = "statestore") -> object:
        nonlocal polls
        if key == "cancel:inference:job-1":
            polls += 1
            if polls > 1:  # not yet at delivery, then while generating
                return FakeSidecar.get_state(sidecar, "idempotency:inference:job-1")
            return None
        return FakeSidecar.get_state(sidecar, key)

    sidecar.get_state = get_state  # type: ignore[method-assign]
    body = _event(request={"prompt": "hi", "sampling": {"max_tokens": 2000, "ignore_eos": True}})
    assert service.on_request_event(body) is Ack.SUCCESS
    [(_, payload)] = sidecar.published
    assert payload["result"]["finish_reason"] == "cancelled"
    assert payload["result"]["completion_tokens"] < 2000
