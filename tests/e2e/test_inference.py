"""Inference's Dapr surfaces through real sidecars: invocation, streaming, pub/sub rules."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from dapr.conf import settings as dapr_settings

from autoglm.core.errors import PermissionDeniedError
from autoglm.core.streaming import stream_generate
from tests.e2e.conftest import Mesh
from tests.support.polling import wait_for, wait_settled


def _stream_entries(mesh: Mesh, topic: str) -> list[dict[str, object]]:
    entries = mesh.backing.redis_client().xrange(topic)
    return [json.loads(fields[b"data"]) for _, fields in entries]


def _results_for(mesh: Mesh, request_id: str) -> list[dict[str, object]]:
    return [
        e["data"]
        for e in _stream_entries(mesh, "inference.results")
        if isinstance(e["data"], dict) and e["data"]["request_id"] == request_id
    ]


def test_embed_through_invocation(mesh: Mesh) -> None:
    client = mesh.gateway.client()
    reply = client.invoke("inference", "embed", {"input": ["hello world", "goodbye"]})
    assert reply["model"] == "all-MiniLM-L6-v2"
    assert len(reply["data"]) == 2 and len(reply["data"][0]) == 384


def test_generate_with_the_dapr_sdk_from_another_app(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app allowed to (the gateway's access list entry) calls ``generate`` with the
    stock SDK: plain JSON in, JSON out."""
    # As an app beside the gateway's sidecar would (the SDK waits for its HTTP health).
    monkeypatch.setattr(dapr_settings, "DAPR_HTTP_PORT", mesh.gateway.ports.http)
    token = mesh.gateway.dapr_headers["dapr-api-token"]
    monkeypatch.setattr(dapr_settings, "DAPR_API_TOKEN", token)
    body = {"prompt": "Once upon a time", "sampling": {"max_tokens": 5, "temperature": 0}}
    with mesh.gateway.dapr_client() as dapr:
        reply = dapr.invoke_method(
            "inference",
            "generate",
            data=json.dumps(body),
            content_type="application/json",
            http_verb="POST",
        )
    result = json.loads(reply.data)
    assert result["completion_tokens"] == 5 and result["finish_reason"] == "length"
    assert result["model"] == "demo-glm" and result["text"]


def test_stream_through_daprd_grpc_proxy(mesh: Mesh) -> None:
    payload = {"prompt": "Once upon a time", "sampling": {"max_tokens": 12, "temperature": 0}}
    frames = list(
        stream_generate(
            payload,
            grpc_port=mesh.gateway.ports.grpc,
            timeout=60,
            api_token=mesh.gateway.dapr_headers["dapr-api-token"],
        )
    )
    deltas = [f["delta"] for f in frames if "delta" in f]
    assert "result" in frames[-1]
    assert "".join(deltas) == frames[-1]["result"]["text"]
    assert len(deltas) >= 2, "tokens must arrive incrementally, not as one block"


def test_duplicate_delivery_yields_one_result(mesh: Mesh) -> None:
    request_id = f"dup-{uuid.uuid4().hex}"
    client = mesh.gateway.client()
    event = {"request_id": request_id, "request": {"prompt": "x", "sampling": {"max_tokens": 2}}}
    client.publish("inference.requests", event)
    wait_for("a result", lambda: _results_for(mesh, request_id), timeout=60)
    client.publish("inference.requests", event)  # the broker redelivers / a client retries
    wait_settled(mesh.backing.redis_client(), "inference.requests")
    assert len(_results_for(mesh, request_id)) == 1


def test_simultaneous_duplicates_yield_one_result(mesh: Mesh) -> None:
    """Both copies are in flight at once: the claim on the request id lets one generate
    and sends the other back until the result is out, then acknowledges it."""
    request_id = f"twin-{uuid.uuid4().hex}"
    client = mesh.gateway.client()
    event = {"request_id": request_id, "request": {"prompt": "x", "sampling": {"max_tokens": 48}}}
    client.publish("inference.requests", event)
    client.publish("inference.requests", event)
    wait_for("a result", lambda: _results_for(mesh, request_id), timeout=60)
    # The second copy is sent back (RETRY) until the result is out: once the topic is
    # settled, no copy is left that could still publish a duplicate.
    wait_settled(mesh.backing.redis_client(), "inference.requests", timeout=90)
    assert len(_results_for(mesh, request_id)) == 1


def test_poison_message_goes_to_dead_letter(mesh: Mesh) -> None:
    marker = f"poison-{uuid.uuid4().hex}"
    client = mesh.gateway.client()
    client.publish("inference.requests", {"not_a_request": marker})

    def dead() -> list[dict[str, object]]:
        entries = _stream_entries(mesh, "inference.requests.deadletter")
        return [e for e in entries if marker in json.dumps(e)]

    wait_for("poison message in inference.requests.deadletter", dead, timeout=30)
    assert not [e for e in _stream_entries(mesh, "inference.results") if marker in json.dumps(e)]


def test_admin_methods_only_from_gateway(mesh: Mesh) -> None:
    with pytest.raises(PermissionDeniedError):
        mesh.archiver.client().invoke("inference", "unload_model", {"model": "demo-glm"})
    ok = mesh.gateway.client().invoke("inference", "load_model", {"model": "demo-glm"})
    assert ok == {"model": "demo-glm", "state": "ready"}


def test_metrics_exposed_in_prometheus_text(mesh: Mesh) -> None:
    text = httpx.get(f"http://127.0.0.1:{mesh.inference_metrics_port}/metrics", timeout=5).text
    for name in (
        "autoglm_request_latency_seconds",
        "autoglm_time_to_first_token_seconds",
        "autoglm_generated_tokens_total",
        "autoglm_queue_depth",
        "autoglm_batch_size",
        "autoglm_models_loaded",
        "autoglm_process_max_rss_bytes",
    ):
        assert name in text
