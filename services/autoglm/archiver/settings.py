"""Settings of the archiver app (env prefix ``AUTOGLM_ARCHIVER_``; nested fields with
``__``, e.g. ``AUTOGLM_ARCHIVER_AUTOSAVE__IDLE_MS=500``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from autoglm.core.settings import AppSettings

Compression = Literal["gzip", "zstd", "none"]
Category = Literal["documents", "images", "text", "archives"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutosavePolicy(_Section):
    """When a dirty session becomes a snapshot version on disk."""

    #: Off: every accepted event is written as its own version at once (write-through).
    enabled: bool = True
    #: A dirty session is written once this long has passed since its last snapshot.
    interval_seconds: float = Field(default=30.0, gt=0)
    #: ... or once this many new versions (turns) arrived since its last snapshot.
    every_n_steps: int = Field(default=5, ge=1)
    #: ... or once no event arrived for it for this long.
    idle_ms: int = Field(default=2000, ge=1)
    #: Versions kept per session; older ones are deleted after a newer one is durable.
    max_keep: int = Field(default=10, ge=1)
    #: Most sessions written per flush cycle (the rest wait for the next cycle).
    batch_size: int = Field(default=32, ge=1)
    compression: Compression = "gzip"
    #: AES-GCM with the key from the secret store (``encryption_secret``).
    encrypt: bool = False


class AttachmentPolicy(_Section):
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    #: A chunk travels base64 in one service-invocation message; daprd's default body
    #: limit is 4 MiB, which 2 MiB of base64 stays under.
    max_chunk_bytes: int = Field(default=2 * 1024 * 1024, ge=1)
    allowed_categories: tuple[Category, ...] = ("documents", "images", "text", "archives")
    #: Archive inspection limits (zip, tar, gzip): read from headers and a bounded stream,
    #: never by extracting to disk.
    archive_max_entries: int = Field(default=10_000, ge=1)
    archive_max_unpacked_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    archive_max_ratio: float = Field(default=200.0, gt=1)


class RetentionPolicy(_Section):
    """Internal scheduler over the audit archive (no Dapr cron binding needed)."""

    enabled: bool = True
    interval_seconds: float = Field(default=3600.0, gt=0)
    #: Rolled daily files older than this are compressed (and encrypted if ``encrypt``).
    compress_after_days: int = Field(default=1, ge=1)
    compression: Compression = "gzip"
    encrypt: bool = False
    #: Files older than this are deleted.
    delete_after_days: int = Field(default=365, ge=1)


class ArchiverSettings(AppSettings):
    env_prefix: ClassVar[str] = "AUTOGLM_ARCHIVER_"

    host: str = "127.0.0.1"
    port: int = Field(default=50052, ge=1, le=65535)
    root: Path = Path(".data/archive")
    #: Prometheus text at ``/metrics``; 0 disables.
    metrics_port: int = Field(default=9465, ge=0, le=65535)
    #: Calls and deliveries the gRPC server handles at once; beyond this gRPC refuses.
    callback_threads: int = Field(default=32, ge=1)
    #: Snapshot and audit events come in bulk (``autoglm.core.bulk_delivery``): daprd
    #: delivers up to ``bulk_max_messages`` of a topic's events in one call, waiting at
    #: most ``bulk_max_await_ms`` for them; 0 messages turns bulk off (one call each).
    #: Both topics' held events share the pub/sub component's ``concurrency`` workers
    #: (32): keep ``bulk_max_messages`` at most half of it, so that under load one
    #: topic's bulk always fills and goes at once instead of both waiting out the window.
    bulk_max_messages: int = Field(default=16, ge=0)
    bulk_max_await_ms: int = Field(default=100, ge=1)
    #: On SIGTERM/SIGINT, calls in flight (uploads, restores) get this long to finish
    #: before they are cancelled and dirty sessions are written.
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    secret_store: str = "vault"
    encryption_secret: str = "archive"
    encryption_key_field: str = "encryption-key"
    #: Earlier keys (base64, comma-separated) that still open older blobs after a rotation.
    previous_keys_field: str = "previous-keys"
    #: The key secret is re-read this often, so a rotation needs no restart.
    key_cache_ttl_s: float = Field(default=60.0, gt=0)
    #: Expected number of archived sessions and the Bloom filter's false-positive rate.
    bloom_capacity: int = Field(default=1_000_000, ge=1)
    bloom_error_rate: float = Field(default=0.01, gt=0, lt=1)
    #: Clean session heads kept in memory for conflict checks (LRU).
    head_cache: int = Field(default=1024, ge=0)
    autosave: AutosavePolicy = AutosavePolicy()
    attachments: AttachmentPolicy = AttachmentPolicy()
    retention: RetentionPolicy = RetentionPolicy()

    @property
    def needs_key(self) -> bool:
        return self.autosave.encrypt or self.retention.encrypt
