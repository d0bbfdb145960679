"""Accepted-but-not-yet-snapshotted session states, durable before an event is acked.

The autosave policy defers snapshots, but Dapr must not be told an event succeeded while
it lives only in memory. Each accepted event first replaces its session's staging file
``{root}/staging/{md5(tenant)[:2]}/{tenant}/{session}.pending`` (atomic write, sealed like
a snapshot); the file is removed once a snapshot of that version is durable, and a
restarted archiver reloads whatever is left (a file whose version is already archived,
left by a crash just after its snapshot, is discarded). One small file per dirty session,
no log to compact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from autoglm.archiver import paths
from autoglm.archiver.atomic import atomic_write, fsync_dir
from autoglm.archiver.codec import Codec, CodecError, CodecInfo, associated_data
from autoglm.archiver.snapshots import SessionState

log = logging.getLogger(__name__)


class Staging:
    def __init__(self, root: Path, codec: Codec) -> None:
        self.dir = root / "staging"
        self.codec = codec

    def _path(self, tenant: str, session_id: str) -> Path:
        return paths.staged_file(self.dir, tenant, session_id)

    def put(self, state: SessionState) -> None:
        blob, info = self.codec.encode(state.encoded, state.aad("staging"))
        header = json.dumps({"version": state.version, "codec": info.to_json()}).encode()
        atomic_write(self._path(state.tenant, state.session_id), header + b"\n" + blob)

    def remove(self, state: SessionState) -> None:
        """Forget the staged state once its snapshot is durable. Not fsynced: should the
        removal be lost in a crash, the file is at or below the newest archived version,
        which ``SessionArchive.load`` recognizes and discards."""
        self._path(state.tenant, state.session_id).unlink(missing_ok=True)

    def discard(self, tenant: str, session_id: str) -> None:
        """Remove the session's staged state, whichever version it is (deletion). Needs no
        in-memory state, so a redelivered deletion after a crash still finds the file."""
        path = self._path(tenant, session_id)
        if not path.parent.is_dir():
            return  # nothing was ever staged for this tenant
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def load_all(self) -> Iterator[SessionState]:
        """Every staged state; an unreadable file is logged and left for an operator."""
        for path in sorted(self.dir.glob("*/*/*.pending")):
            try:
                header, blob = path.read_bytes().split(b"\n", 1)
                meta = json.loads(header)
                tenant, session_id = path.parent.name, path.name.removesuffix(".pending")
                aad = associated_data("staging", tenant, session_id, meta["version"])
                plain = self.codec.decode(blob, CodecInfo.from_json(meta["codec"]), aad)
                yield SessionState.from_json(json.loads(plain))
            except (ValueError, KeyError, CodecError) as exc:
                log.error(
                    "unreadable staged session", extra={"path": str(path), "reason": str(exc)}
                )
