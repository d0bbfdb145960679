"""``python -m autoglm.archiver``: serve snapshots, attachments and audit over gRPC.

SIGTERM/SIGINT stop the gRPC server (calls in flight get ``shutdown_grace_s`` to finish),
then every dirty session is written before exit (graceful drain); what cannot be written
stays staged and is reloaded on the next start.
"""

from __future__ import annotations

import logging
import sys

from autoglm.archiver.app import build_app
from autoglm.archiver.archive_key import ArchiveKeys
from autoglm.archiver.attachments import AttachmentStore
from autoglm.archiver.audit import AuditLog
from autoglm.archiver.autosave import Autosaver, tick_seconds
from autoglm.archiver.bloom import BloomFilter
from autoglm.archiver.codec import Codec
from autoglm.archiver.metrics import ArchiverMetrics, Readiness
from autoglm.archiver.retention import Retention, RetentionScheduler
from autoglm.archiver.serving import ArchiverService
from autoglm.archiver.sessions import SessionArchive
from autoglm.archiver.settings import ArchiverSettings
from autoglm.archiver.snapshots import SnapshotStore
from autoglm.archiver.staging import Staging
from autoglm.core.bulk_delivery import BulkConfig
from autoglm.core.callback_server import run_until_stopped
from autoglm.core.errors import AutoGLMError
from autoglm.core.lifecycle import start_app
from autoglm.core.sidecar import Sidecar

log = logging.getLogger("autoglm.archiver")


def main() -> int:
    settings = start_app("archiver", ArchiverSettings)
    settings.root.mkdir(parents=True, exist_ok=True)
    sidecar = Sidecar()
    cipher = ArchiveKeys(
        sidecar,
        store=settings.secret_store,
        secret=settings.encryption_secret,
        current_field=settings.encryption_key_field,
        previous_field=settings.previous_keys_field,
        ttl_s=settings.key_cache_ttl_s,
    )
    if settings.needs_key:
        try:
            sidecar.wait_outbound()
            cipher()
        except AutoGLMError as exc:
            log.error("cannot read the archive encryption key", extra={"reason": exc.message})
            return 3
    policy = settings.autosave
    metrics = ArchiverMetrics()
    readiness = Readiness(metrics)
    store = SnapshotStore(
        settings.root,
        Codec(policy.compression, policy.encrypt, cipher),
        settings.model_dump(mode="json"),
        policy.max_keep,
    )
    sessions = SessionArchive(
        store,
        Staging(settings.root, Codec(policy.compression, policy.encrypt, cipher)),
        policy,
        BloomFilter(settings.bloom_capacity, settings.bloom_error_rate),
        metrics,
        readiness,
        head_cache=settings.head_cache,
    )
    recovered = sessions.load()
    service = ArchiverService(
        sessions,
        AttachmentStore(settings.root, sidecar, settings.attachments),
        # Reads back what retention compressed and sealed, with the same key.
        AuditLog(
            settings.root,
            Codec(settings.retention.compression, settings.retention.encrypt, cipher),
        ),
        metrics,
        readiness,
        settings.root / ".probe",
    )
    autosaver = Autosaver(sessions.flush_due, policy.batch_size, tick_seconds(policy))
    autosaver.start()
    retention = RetentionScheduler(
        Retention(
            settings.root / "audit",
            settings.retention,
            Codec(settings.retention.compression, settings.retention.encrypt, cipher),
            metrics,
        ),
        settings.retention.interval_seconds,
    )
    if settings.retention.enabled:
        retention.start()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.host)
    bulk = (
        BulkConfig(settings.bulk_max_messages, settings.bulk_max_await_ms)
        if settings.bulk_max_messages
        else None
    )
    app = build_app(service, settings.callback_threads, bulk)
    log.info(
        "archiver listening",
        extra={"port": settings.port, "root": str(settings.root), "recovered": recovered},
    )
    run_until_stopped(app, settings.port, settings.host, settings.shutdown_grace_s)
    # The server is stopped: no new events. Write every dirty session before exiting.
    retention.stop()
    autosaver.stop()
    written = sessions.flush_all("shutdown")
    log.info("archiver stopped", extra={"drained": written, "left_staged": sessions.dirty_count})
    sidecar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
