"""Events published after the request that caused them has been answered.

Some events do not need to be on a request's critical path: the effect they report is
already durable elsewhere (a session or stored response is in the state store before its
snapshot event is published; the archive catches up from the next change otherwise), or
they are records about the request (audit events). Publishing them in the request costs
a round trip to daprd (and its broker write) on every reply; here a worker publishes
them just after, in the order they were queued, each with the trace context of the
request that queued it (so the trace still runs from the client to the archiver).

Events that queued up while the worker was publishing go out together, one Dapr bulk
publish per topic (``publish_bulk``): one call to daprd instead of one per event (the
audit event of every request, a session's snapshot of every turn). Each entry is a
whole CloudEvent with its own request's trace context (``autoglm.core.bulk_publish``),
so every event keeps its own trace although the bulk request carries one. Once it has
an event, the worker waits up to ``LINGER_S`` (50 ms) for others to join it, but only
while events keep coming (the previous bulk left less than ``LINGER_S`` ago): a single
publish costs daprd about 0.3 ms of CPU and this process 0.2 ms, an event in a bulk of
four half that and less (measured on this repo's daprd), which matters under load; an
event after a quiet spell goes out at once, so at low traffic the archive (what a
restore after a lost state store reads) is no further behind than without bulks. An
entry daprd did not publish
is published again alone, so a bulk failure never loses more than a single publish would.

What does not change: failures are logged, never raised (callers already treated these
publishes as best-effort: a request never failed for them); ``flush`` (on close, and at
interpreter exit, so a graceful stop drains the queue) waits until every queued event
was handed to daprd; a full queue makes the caller publish itself (back-pressure, never
a drop). What does: an event queued by a request answered in the last milliseconds
before the process is killed (SIGKILL, OOM), or within ``LINGER_S`` of that, is lost
with the process, where before the request would have been cut instead.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import propagate

from autoglm.core.bulk_publish import Event
from autoglm.core.errors import AutoGLMError

log = logging.getLogger(__name__)

#: ``(topic, payload, pubsub, headers)``: headers carry the trace context.
PublishFn = Callable[[str, dict[str, Any], str, dict[str, str]], None]
#: ``(topic, events, pubsub)``: publishes the events in one call; returns the indices
#: of those it did not publish.
PublishBulkFn = Callable[[str, list[Event], str], list[int]]

_Item = tuple[str, dict[str, Any], str, dict[str, str]]

#: Most events sent in one bulk publish.
MAX_BATCH = 64
#: How long the worker waits, once it has an event, for others to join its bulk (only
#: while events keep coming: the previous bulk left less than this long ago).
LINGER_S = 0.05


class DeferredPublisher:
    """One worker publishing queued events in order (those queued together in bulk)."""

    def __init__(
        self,
        publish: PublishFn,
        *,
        publish_bulk: PublishBulkFn | None = None,
        max_queued: int = 10_000,
        max_batch: int = MAX_BATCH,
        linger_s: float = LINGER_S,
    ) -> None:
        self._publish = publish
        self._publish_bulk = publish_bulk
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._queue: queue.Queue[_Item] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        atexit.register(self.flush)

    def submit(self, topic: str, payload: dict[str, Any], pubsub: str) -> None:
        """Queue ``payload`` for ``topic`` with the caller's trace context; publishes it
        here if the queue is full."""
        headers: dict[str, str] = {}
        propagate.inject(headers)
        item = (topic, payload, pubsub, headers)
        self._ensure_worker()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._send(item)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was published (or failed and was logged)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                log.error("deferred events not published", extra={"left": self._queue.qsize()})
                return False
            time.sleep(0.005)
        return True

    def _ensure_worker(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="deferred-publisher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        last_sent = float("-inf")
        while True:
            batch = [self._queue.get()]
            now = time.monotonic()
            busy = now - last_sent < self._linger_s
            deadline = now + (self._linger_s if busy else 0.0)
            while len(batch) < self._max_batch:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                    batch.append(item)
                except queue.Empty:
                    break
            try:
                self._send_batch(batch)
            finally:
                last_sent = time.monotonic()
                for _ in batch:
                    self._queue.task_done()

    def _send_batch(self, batch: list[_Item]) -> None:
        """Each topic's events in one bulk publish (alone: a plain one); what the bulk
        did not publish, one by one."""
        groups: dict[tuple[str, str], list[_Item]] = {}
        for item in batch:
            groups.setdefault((item[2], item[0]), []).append(item)
        for (pubsub, topic), items in groups.items():
            left: list[int] | range = range(len(items))
            if len(items) > 1 and self._publish_bulk is not None:
                try:
                    events = [(payload, headers) for _, payload, _, headers in items]
                    left = self._publish_bulk(topic, events, pubsub)
                except AutoGLMError as exc:
                    reason = exc.message
                    log.warning("bulk publish failed", extra={"topic": topic, "reason": reason})
                except Exception:  # never let the worker die with events still queued
                    log.exception("bulk publish failed")
            for i in left:
                try:
                    self._send(items[i])
                except Exception:
                    log.exception("deferred publish failed")

    def _send(self, item: _Item) -> None:
        topic, payload, pubsub, headers = item
        try:
            self._publish(topic, payload, pubsub, headers)
        except AutoGLMError as exc:
            log.error("event not published", extra={"topic": topic, "reason": exc.message})
