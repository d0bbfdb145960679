"""Prometheus metrics of the archiver, and its readiness (disk faults make it not ready)."""

from __future__ import annotations

import errno
import logging
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

log = logging.getLogger(__name__)


class ArchiverMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.events = Counter(
            "autoglm_archiver_events_total",
            "Events by topic and outcome",
            ["topic", "outcome"],
            registry=r,
        )
        self.snapshots = Counter(
            "autoglm_archiver_snapshots_written_total",
            "Snapshot versions written by trigger",
            ["trigger"],
            registry=r,
        )
        self.write_errors = Counter(
            "autoglm_archiver_write_errors_total",
            "Failed disk writes by operation and errno",
            ["operation", "errno"],
            registry=r,
        )
        self.ready = Gauge("autoglm_archiver_ready", "1 when writes succeed", registry=r)
        self.ready.set(1)
        self.dirty = Gauge(
            "autoglm_archiver_dirty_sessions", "Sessions not yet snapshotted", registry=r
        )
        self.restores = Counter(
            "autoglm_archiver_restores_total", "Restores by outcome", ["outcome"], registry=r
        )
        self.uploads = Counter(
            "autoglm_archiver_upload_chunks_total",
            "Attachment chunks by outcome",
            ["outcome"],
            registry=r,
        )
        self.retention = Counter(
            "autoglm_archiver_retention_files_total",
            "Files compressed or deleted by retention",
            ["action"],
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)


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
