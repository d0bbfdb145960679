"""Append-only audit archive: one JSONL file per tenant and UTC day.

``{root}/audit/{tenant}/{YYYY-MM-DD}.jsonl``; each event is appended and fsynced before it
is acknowledged. A file stops growing when its day ends ("rolled"); ``retention`` then
compresses and eventually deletes it.
"""

from __future__ import annotations

import time
from pathlib import Path

from autoglm.archiver import paths
from autoglm.archiver.atomic import durable_append
from autoglm.core.schemas import AuditEvent


class AuditLog:
    def __init__(self, root: Path) -> None:
        self.dir = root / "audit"

    def append(self, event: AuditEvent) -> Path:
        day = time.strftime("%Y-%m-%d", time.gmtime(event.time))
        path = paths.inside(self.dir, event.tenant, f"{day}.jsonl")
        durable_append(path, event.model_dump_json().encode() + b"\n")
        return path
