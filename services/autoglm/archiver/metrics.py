"""Prometheus metrics of the archiver, and its readiness (disk faults make it not ready)."""

from __future__ import annotations

import errno
import logging
import threading

from autoglm.core.metrics import Metrics

log = logging.getLogger(__name__)


class ArchiverMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.events = self.counter(
            "autoglm_archiver_events_total", "Events by topic and outcome", "topic", "outcome"
        )
        self.snapshots = self.counter(
            "autoglm_archiver_snapshots_written_total",
            "Snapshot versions written by trigger",
            "trigger",
        )
        self.write_errors = self.counter(
            "autoglm_archiver_write_errors_total",
            "Failed disk writes by operation and errno",
            "operation",
            "errno",
        )
        self.ready = self.gauge("autoglm_archiver_ready", "1 when writes succeed")
        self.ready.set(1)
        self.dirty = self.gauge("autoglm_archiver_dirty_sessions", "Sessions not yet snapshotted")
        self.restores = self.counter(
            "autoglm_archiver_restores_total", "Restores by outcome", "outcome"
        )
        self.uploads = self.counter(
            "autoglm_archiver_upload_chunks_total", "Attachment chunks by outcome", "outcome"
        )
        self.retention = self.counter(
            "autoglm_archiver_retention_files_total",
            "Files compressed or deleted by retention",
            "action",
        )


class Readiness:
    """Not ready from a failed write until the next successful one (space came back)."""

    def __init__(self, metrics: ArchiverMetrics) -> None:
        self.metrics = metrics
        self._reason: str | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._reason is None

    @property
    def reason(self) -> str | None:
        return self._reason

    def failed(self, operation: str, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, "EUNKNOWN")
        self.metrics.write_errors.labels(operation, name).inc()
        with self._lock:
            first = self._reason is None
            self._reason = f"{operation}: {name} ({exc.strerror or exc})"
        self.metrics.ready.set(0)
        # Logged once per outage, not once per redelivery; the counter counts them all.
        if first:
            log.error(
                "archive write failed; not ready, events will be redelivered",
                extra={"operation": operation, "errno": name, "reason": exc.strerror},
            )

    def succeeded(self) -> None:
        with self._lock:
            was = self._reason
            self._reason = None
        if was is not None:
            self.metrics.ready.set(1)
            log.info("archive writes succeed again; ready", extra={"previous": was})
