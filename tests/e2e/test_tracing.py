"""One trace end to end: the client's traceparent is continued by the gateway, both
sidecars, the inference ``generate`` span, the audit publish and the archiver."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.e2e.conftest import Mesh
from tests.support.otlp import ReceivedSpan
from tests.support.polling import wait_for


def _spans_when(
    mesh: Mesh, trace_id: str, done: Callable[[list[ReceivedSpan]], bool]
) -> list[ReceivedSpan]:
    """The trace's spans once ``done`` holds for them (daprd exports in batches)."""
    spans: list[ReceivedSpan] = []

    def ready() -> bool:
        spans[:] = mesh.backing.otlp.trace(trace_id)
        return done(spans)

    with contextlib.suppress(AssertionError):  # the assertions below name what is missing
        wait_for("the trace's spans", ready, timeout=40, every=0.5)
    return spans


def test_one_trace_from_client_to_archiver(mesh: Mesh) -> None:
    trace_id = secrets.token_hex(16)
    headers = dict(mesh.headers(), traceparent=f"00-{trace_id}-{secrets.token_hex(8)}-01")
    body = {"model": "demo-glm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    resp = httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions", json=body, headers=headers, timeout=60
    )
    assert resp.status_code == 200, resp.text

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {(s.service, s.name) for s in spans}
        # daprd exports its spans in batches, later than the apps: wait for the
        # archiver sidecar's delivery span too, not only for the handler's.
        wanted = {("inference", "generate"), ("archiver", "audit process")}
        wanted.add(("archiver", "pubsub/audit"))
        return wanted <= names and any("CallLocal" in name for _, name in names)

    spans = _spans_when(mesh, trace_id, complete)
    by_service: dict[str, set[str]] = {}
    for s in spans:
        by_service.setdefault(s.service, set()).add(s.name)
    assert "POST /v1/chat/completions" in by_service.get("gateway", set()), by_service
    generate = [s for s in spans if s.service == "inference" and s.name == "generate"]
    assert generate, by_service
    attrs = generate[0].attributes
    assert attrs["gen_ai.usage.output_tokens"] >= 1 and attrs["autoglm.batch_size"] >= 1
    # The sidecars traced the invocation they carried from gateway to inference.
    assert any(s.name == "CallLocal/inference/generate" for s in spans), by_service
    # The audit event crossed the archiver's daprd into the archiver's handler.
    assert "pubsub/audit" in by_service.get("archiver", set()), by_service
    assert "audit process" in by_service["archiver"], by_service


def test_audit_events_published_together_keep_their_own_traces(mesh: Mesh) -> None:
    """Requests answered together queue their audit events together, which the gateway
    publishes in one bulk call (``autoglm.core.deferred``): each event still reaches the
    archiver in its own request's trace."""
    body = {"model": "demo-glm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    traces = [secrets.token_hex(16) for _ in range(8)]

    def chat(trace_id: str) -> int:
        headers = dict(mesh.headers(), traceparent=f"00-{trace_id}-{secrets.token_hex(8)}-01")
        url = f"{mesh.gateway_url}/v1/chat/completions"
        return httpx.post(url, json=body, headers=headers, timeout=60).status_code

    with ThreadPoolExecutor(len(traces)) as pool:
        assert set(pool.map(chat, traces)) == {200}

    def delivered(spans: list[ReceivedSpan]) -> bool:
        return ("archiver", "audit process") in {(s.service, s.name) for s in spans}

    missing = [t for t in traces if not delivered(_spans_when(mesh, t, delivered))]
    assert not missing, f"{len(missing)} of {len(traces)} traces lost their audit event"
