"""Pub/sub through real daprd and Redis: inference's handler publishes its result; how
daprd treats a subscriber's RETRY."""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import ExitStack
from pathlib import Path

import yaml

from autoglm.core.pubsub import Ack
from autoglm.core.schemas import AUDIT_TOPIC
from autoglm.core.sidecar import Sidecar
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.serving import InferenceService
from tests.support.polling import wait_for
from tests.support.stack import Backing, start_app


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


def test_bulk_publish_keeps_each_event_in_its_own_trace(sidecar: Sidecar, backing: Backing) -> None:
    """The deferred publisher's bulk (``autoglm.core.bulk_publish``): daprd takes each
    CloudEvent entry whole, so each stored event carries the trace context it was queued
    with, not the bulk request's."""
    topic = "inference.results"
    run = uuid.uuid4().hex
    parents = [f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01" for _ in range(3)]
    events = [({"run": run, "n": i}, {"traceparent": p}) for i, p in enumerate(parents)]
    assert sidecar._publish_bulk(topic, events) == []
    stored = [
        json.loads(f[b"data"])
        for _, f in backing.redis_client().xrange(topic)
        if run.encode() in f[b"data"]
    ]
    by_n = {e["data"]["n"]: e for e in stored}
    assert sorted(by_n) == [0, 1, 2]
    assert [by_n[i]["traceparent"] for i in range(3)] == parents
    assert all(e["topic"] == topic and e["pubsubname"] == "pubsub" for e in stored)
    # As a single publish from this app would say (daprd's own default is "Dapr").
    assert {e["source"] for e in stored} == {"itest"}
    # A topic daprd refuses: every entry is reported as not published.
    assert sidecar._publish_bulk("no.such.topic", events) == [0, 1, 2]


def test_daprd_retries_a_retry_status_and_a_failed_call_alike_then_dead_letters_them(
    sidecar: Sidecar, backing: Backing, tmp_path: Path
) -> None:
    """Pins what the apps' RETRY rests on (``callback_server.topic_response``): under a
    resiliency retry policy like the apps' (here 2 quick retries), daprd 1.18 delivers
    an event answered RETRY again, exactly like one whose call failed, and once the
    retries are spent moves both to the subscription's dead-letter topic; nothing is
    acknowledged as handled and nothing is lost."""
    resources = tmp_path / "resources"
    shutil.copytree(backing.resources, resources)
    (resources / "resiliency.yaml").write_text(yaml.safe_dump(_QUICK_RETRIES))
    log = tmp_path / "deliveries"
    log.touch()
    probes = {"retry": f"probe-{uuid.uuid4().hex}", "fail": f"probe-{uuid.uuid4().hex}"}
    with ExitStack() as stack:
        start_app(
            backing,
            stack,
            "itest-probe",
            "tests.support.pubsub_probe",
            env={"AUTOGLM_PROBE_LOG": str(log)},
            resources=resources,
        )
        client = backing.redis_client()
        stack.callback(client.close)
        for answer, probe in probes.items():
            sidecar.publish(AUDIT_TOPIC, {"probe": probe, "answer": answer})

        def dead_lettered() -> set[str]:
            entries = client.xrange(f"{AUDIT_TOPIC}.deadletter")
            return {p for p in probes.values() for _, f in entries if p.encode() in f[b"data"]}

        probe_ids = {
            entry_id
            for entry_id, f in client.xrange(AUDIT_TOPIC)
            if any(p.encode() in f[b"data"] for p in probes.values())
        }
        assert len(probe_ids) == 2

        def settled() -> bool:
            """Both probes dead-lettered, and neither still pending in the group (daprd
            acknowledges the original just after its dead-letter publish)."""
            pending = client.xpending_range(AUDIT_TOPIC, "itest-probe", "-", "+", 10_000)
            return dead_lettered() == set(probes.values()) and probe_ids.isdisjoint(
                p["message_id"] for p in pending
            )

        wait_for("both probes dead-lettered and acknowledged", settled, 30)
    # The first delivery and the policy's 2 retries, each.
    assert [_count(log, probes["retry"]), _count(log, probes["fail"])] == [3, 3]


#: The probe's resiliency: the apps' inbound delivery policy, with 2 quick retries.
_QUICK_RETRIES = {
    "apiVersion": "dapr.io/v1alpha1",
    "kind": "Resiliency",
    "metadata": {"name": "probe"},
    "scopes": ["itest-probe"],
    "spec": {
        "policies": {
            "retries": {"delivery": {"policy": "constant", "duration": "200ms", "maxRetries": 2}}
        },
        "targets": {"components": {"pubsub": {"inbound": {"retry": "delivery"}}}},
    },
}


def _count(log: Path, probe: str) -> int:
    return log.read_text().split().count(probe)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
