"""The on-disk archive: session snapshots by version, audit events by tenant and day.

Layout under ``root`` (DESIGN.md / archiver issue)::

    sessions/{md5(tenant)[:2]}/{tenant}/{session}/{version}/context.bin    gzip JSON history
    sessions/{md5(tenant)[:2]}/{tenant}/{session}/{version}/metadata.json  sha256, time, ...
    audit/{tenant}/{YYYY-MM-DD}.jsonl

``metadata.json`` is written last, so a version directory without it is an incomplete
write that readers ignore.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from pathlib import Path

from autoglm.archiver.atomic import atomic_write, durable_append
from autoglm.core.schemas import AuditEvent, SnapshotEvent


class Archive:
    def __init__(self, root: Path) -> None:
        self.root = root

    def session_dir(self, tenant: str, session_id: str) -> Path:
        shard = hashlib.md5(tenant.encode()).hexdigest()[:2]
        return self.root / "sessions" / shard / tenant / session_id

    def write_snapshot(self, event: SnapshotEvent) -> Path:
        """Store ``event`` as its version; rewriting the same version is a no-op."""
        version_dir = self.session_dir(event.tenant, event.session_id) / f"{event.version:08d}"
        if (version_dir / "metadata.json").is_file():
            return version_dir  # redelivered duplicate: the version is already durable
        context = gzip.compress(
            json.dumps([m.model_dump() for m in event.messages]).encode(), mtime=0
        )
        atomic_write(version_dir / "context.bin", context)
        metadata = {
            "tenant": event.tenant,
            "session_id": event.session_id,
            "version": event.version,
            "steps": len(event.messages),
            "model": event.model,
            "created": event.created,
            "archived": time.time(),
            "compression": "gzip",
            "sha256": hashlib.sha256(context).hexdigest(),
        }
        atomic_write(version_dir / "metadata.json", json.dumps(metadata, indent=2).encode())
        return version_dir

    def append_audit(self, event: AuditEvent) -> Path:
        day = time.strftime("%Y-%m-%d", time.gmtime(event.time))
        path = self.root / "audit" / event.tenant / f"{day}.jsonl"
        durable_append(path, event.model_dump_json().encode() + b"\n")
        return path
