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

from autoglm.core.bulk_publish import bulk_entries, failed_indices
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
    pub = DeferredPublisher(rec.publish, max_queued=1, linger_s=0)
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


class BulkRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.bulks: list[tuple[str, list[tuple[dict[str, Any], dict[str, str]]]]] = []
        #: payload numbers the bulk reports as not published
        self.bulk_fails: set[int] = set()
        self.bulk_error: Exception | None = None

    def publish_bulk(
        self, topic: str, events: list[tuple[dict[str, Any], dict[str, str]]], pubsub: str
    ) -> list[int]:
        self.bulks.append((topic, events))
        if self.bulk_error is not None:
            raise self.bulk_error
        return [i for i, (p, _) in enumerate(events) if p["n"] in self.bulk_fails]


def _queued_behind_a_busy_worker(rec: BulkRecorder, pub: DeferredPublisher) -> None:
    """Holds the worker on a first event while the test queues the rest."""
    rec.gate.clear()
    pub.submit("first", {"n": -1}, "pubsub")
    wait_for(lambda: pub._queue.qsize() == 0)


def test_events_queued_together_go_out_in_one_bulk_per_topic_each_in_its_trace() -> None:
    rec = BulkRecorder()
    pub = DeferredPublisher(rec.publish, publish_bulk=rec.publish_bulk, linger_s=0)
    _queued_behind_a_busy_worker(rec, pub)
    for i in range(3):
        ctx = SpanContext(0x100 + i, 0x200 + i, is_remote=False, trace_flags=TraceFlags(1))
        with trace.use_span(NonRecordingSpan(ctx)):
            pub.submit("audit", {"n": i}, "pubsub")
    pub.submit("session.snapshots", {"n": 9}, "pubsub")  # alone on its topic
    rec.gate.set()
    assert pub.flush(5)
    assert [(t, [p["n"] for p, _ in evs]) for t, evs in rec.bulks] == [("audit", [0, 1, 2])]
    parents = [h["traceparent"] for _, h in rec.bulks[0][1]]
    assert parents == [f"00-{0x100 + i:032x}-{0x200 + i:016x}-01" for i in range(3)]
    # The first (the worker was idle) and the lone one: plain publishes.
    assert [(t, p["n"]) for t, p, _ in rec.calls] == [("first", -1), ("session.snapshots", 9)]


def test_what_a_bulk_did_not_publish_is_published_alone() -> None:
    rec = BulkRecorder()
    rec.bulk_fails = {1}
    pub = DeferredPublisher(rec.publish, publish_bulk=rec.publish_bulk, linger_s=0)
    _queued_behind_a_busy_worker(rec, pub)
    for i in range(3):
        pub.submit("audit", {"n": i}, "pubsub")
    rec.gate.set()
    assert pub.flush(5)
    assert [p["n"] for t, p, _ in rec.calls if t == "audit"] == [1]
    # A bulk that failed as a whole: every event alone.
    rec.bulk_error = UnavailableError("daprd gone")
    rec.calls.clear()
    _queued_behind_a_busy_worker(rec, pub)
    for i in range(3):
        pub.submit("audit", {"n": i}, "pubsub")
    rec.gate.set()
    assert pub.flush(5)
    assert [p["n"] for t, p, _ in rec.calls if t == "audit"] == [0, 1, 2]


def test_bulk_entries_are_whole_cloud_events_with_their_own_trace() -> None:
    parent = f"00-{0xABC:032x}-{0xDEF:016x}-01"
    events = [({"n": 1}, {"traceparent": parent, "tracestate": "k=v"}), ({}, {})]
    entries = bulk_entries(events, source="gateway")
    assert [e["entryId"] for e in entries] == ["0", "1"]
    assert {e["contentType"] for e in entries} == {"application/cloudevents+json"}
    first, second = (e["event"] for e in entries)
    assert first["data"] == {"n": 1} and first["datacontenttype"] == "application/json"
    assert first["traceparent"] == first["traceid"] == parent and first["tracestate"] == "k=v"
    assert first["specversion"] == "1.0" and first["id"] != second["id"]
    assert first["source"] == second["source"] == "gateway"
    # No trace context: daprd fills in its own span's.
    assert "traceparent" not in second and "traceid" not in second


def test_failed_indices_trust_only_a_reply_that_names_entries() -> None:
    assert failed_indices({"failedEntries": [{"entryId": "2"}, {"entryId": "0"}]}, 3) == [0, 2]
    assert failed_indices({"failedEntries": []}, 2) == [0, 1]
    assert failed_indices({"errorCode": "ERR_PUBSUB_FORBIDDEN"}, 2) == [0, 1]
    assert failed_indices({"failedEntries": [{"entryId": "7"}]}, 2) == [0, 1]
    assert failed_indices(None, 1) == [0]


def test_while_events_keep_coming_the_worker_lingers_so_neighbours_share_a_bulk() -> None:
    rec = BulkRecorder()
    pub = DeferredPublisher(rec.publish, publish_bulk=rec.publish_bulk, linger_s=0.5)
    pub.submit("audit", {"n": -1}, "pubsub")  # traffic: published just now
    assert pub.flush(5)
    pub.submit("audit", {"n": 0}, "pubsub")
    time.sleep(0.05)  # the worker has this one and waits for company
    pub.submit("audit", {"n": 1}, "pubsub")
    assert pub.flush(5)
    assert [[p["n"] for p, _ in evs] for _, evs in rec.bulks] == [[0, 1]]
    assert [payload["n"] for _, payload, _ in rec.calls] == [-1]


def test_an_event_after_a_quiet_spell_goes_out_without_lingering() -> None:
    """At low traffic the archive must not fall behind by the linger: the first event
    after a quiet spell is published at once; lingering starts once events keep coming."""
    rec = BulkRecorder()
    pub = DeferredPublisher(rec.publish, publish_bulk=rec.publish_bulk, linger_s=5.0)
    start = time.monotonic()
    pub.submit("audit", {"n": 0}, "pubsub")
    assert pub.flush(2)  # well inside the 5 s linger
    assert time.monotonic() - start < 2
    assert [payload["n"] for _, payload, _ in rec.calls] == [0]
