"""``autoglm.core.deferred``: events published after the request, in order, with the
trace context of the request that queued them, never dropped, failures logged."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from autoglm.core.deferred import DeferredPublisher
from autoglm.core.errors import UnavailableError

pytestmark = pytest.mark.unit


def wait_for(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.001)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: set[str] = set()

    def publish(self, topic: str, payload: dict[str, Any], pubsub: str, h: dict[str, str]) -> None:
        self.gate.wait(5)
        if topic in self.fail:
            raise UnavailableError("broker down")
        self.calls.append((topic, payload, h))


def test_events_go_out_in_order_and_flush_waits_for_them() -> None:
    rec = Recorder()
    pub = DeferredPublisher(rec.publish)
    for i in range(5):
        pub.submit("session.snapshots", {"v": i}, "pubsub")
    assert pub.flush(5)
    assert [c[1]["v"] for c in rec.calls] == [0, 1, 2, 3, 4]


def test_each_event_keeps_the_trace_of_the_request_that_queued_it() -> None:
    rec = Recorder()
    pub = DeferredPublisher(rec.publish)
    ctx = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(ctx)):
        pub.submit("audit", {"n": 1}, "pubsub")
    pub.submit("audit", {"n": 2}, "pubsub")  # no trace here
    assert pub.flush(5)
    assert rec.calls[0][2]["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    assert "traceparent" not in rec.calls[1][2]


def test_a_failed_publish_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    rec.fail = {"audit"}
    pub = DeferredPublisher(rec.publish)
    pub.submit("audit", {"n": 1}, "pubsub")
    pub.submit("session.snapshots", {"v": 1}, "pubsub")
    assert pub.flush(5)
    assert [(t, p) for t, p, _ in rec.calls] == [("session.snapshots", {"v": 1})]
    assert "event not published" in caplog.text


def test_a_full_queue_publishes_in_the_caller_instead_of_dropping() -> None:
    rec = Recorder()
    pub = DeferredPublisher(rec.publish, max_queued=1)
    rec.gate.clear()
    pub.submit("t", {"n": 0}, "pubsub")  # taken by the worker, which blocks
    wait_for(lambda: pub._queue.qsize() == 0)
    pub.submit("t", {"n": 1}, "pubsub")  # queued
    done = threading.Event()

    def third() -> None:
        pub.submit("t", {"n": 2}, "pubsub")  # queue full: published here
        done.set()

    threading.Thread(target=third).start()
    rec.gate.set()
    assert done.wait(5) and pub.flush(5)
    assert sorted(c[1]["n"] for c in rec.calls) == [0, 1, 2]
