"""Versioned session snapshots on disk.

Layout (one directory per version, created complete by a single rename)::

    {root}/sessions/{md5(tenant)[:2]}/{tenant}/{session}/{version:08d}/
        context.bin    history (JSON), compressed, AES-GCM sealed when encryption is on
        metadata.json  time, version, steps, model, sha256 of context.bin, settings digest
        config.yaml    the effective settings that produced it
    {root}/sessions/.../{session}/deleted.json
        {"version": v, ...}: the session was deleted at version v

A crash mid-write leaves only a hidden temp directory that readers never pick. Reads
verify the sha256 before the bytes are used; rotation deletes old versions only after
the new one is durable. The deletion marker outlives the versions it removed: pub/sub is
at-least-once and unordered, so a snapshot event for the deleted session can still
arrive, and every read here treats versions at or below the marker as absent (also when
a crash left them on disk between marker and removal).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from autoglm.archiver import paths
from autoglm.archiver.atomic import atomic_dir, atomic_write, fsync_dir, write_file
from autoglm.archiver.codec import Codec, CodecError, CodecInfo, associated_data
from autoglm.core.errors import InternalError, NotFoundError
from autoglm.core.schemas import ChatMessage

log = logging.getLogger(__name__)

#: Temp directories older than this belong to a crashed writer and are removed.
_STALE_TMP_S = 600.0

#: The deletion marker in a session's directory (not all digits, so never a version).
DELETED_MARKER = "deleted.json"

#: Sessions whose deletion marker (or its absence) is remembered.
_DELETED_CACHE = 65536


@dataclass(frozen=True)
class SessionState:
    """One version of a session's history, as archived."""

    tenant: str
    session_id: str
    version: int
    messages: tuple[ChatMessage, ...]
    model: str | None = None
    created: float = field(default_factory=time.time)
    #: version -> message count for earlier versions this history extends (bounded);
    #: how a stale append finds the base it was written against.
    lineage: dict[int, int] = field(default_factory=dict)
    #: Idempotency keys of stale events already merged in (bounded).
    merged: tuple[str, ...] = ()
    #: Set on a version created by an automatic merge.
    merged_from: dict[str, Any] | None = None
    #: The event's ``record`` (a stored response's object); None for sessions.
    record: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.session_id}"

    def aad(self, purpose: str) -> bytes:
        return associated_data(purpose, self.tenant, self.session_id, self.version)

    @cached_property
    def encoded(self) -> bytes:
        """``to_json`` as compact JSON bytes, encoded once (staging and the snapshot of
        the same state both write it)."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "session_id": self.session_id,
            "version": self.version,
            "messages": [m.model_dump() for m in self.messages],
            "model": self.model,
            "created": self.created,
            "lineage": {str(k): v for k, v in self.lineage.items()},
            "merged": list(self.merged),
            "merged_from": self.merged_from,
            "record": self.record,
        }

    @staticmethod
    def from_json(doc: dict[str, Any]) -> SessionState:
        return SessionState(
            tenant=doc["tenant"],
            session_id=doc["session_id"],
            version=int(doc["version"]),
            messages=tuple(ChatMessage.model_validate(m) for m in doc["messages"]),
            model=doc.get("model"),
            created=float(doc.get("created", 0.0)),
            lineage={int(k): int(v) for k, v in (doc.get("lineage") or {}).items()},
            merged=tuple(doc.get("merged") or ()),
            merged_from=doc.get("merged_from"),
            record=doc.get("record"),
        )


class CorruptSnapshotError(InternalError, code="corrupt_snapshot"):
    """A snapshot file that cannot be read back."""


class SnapshotStore:
    def __init__(self, root: Path, codec: Codec, settings: dict[str, Any], max_keep: int) -> None:
        self.root = root
        self.codec = codec
        self.max_keep = max_keep
        self._config_yaml = yaml.safe_dump(settings, sort_keys=True).encode()
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
        self.settings_digest = "sha256:" + hashlib.sha256(canonical).hexdigest()
        # Deletion markers known to this process (the archive's single writer), so that
        # every event of a session does not look for one on disk.
        self._deleted: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._deleted_lock = threading.Lock()

    def session_dir(self, tenant: str, session_id: str) -> Path:
        return paths.session_dir(self.root, tenant, session_id)

    def _on_disk(self, tenant: str, session_id: str) -> list[int]:
        try:
            entries = list(self.session_dir(tenant, session_id).iterdir())
        except FileNotFoundError:
            return []
        return sorted(int(p.name) for p in entries if p.name.isdigit() and p.is_dir())

    def versions(self, tenant: str, session_id: str) -> list[int]:
        """Complete versions above the deletion marker, oldest first (temp directories
        are not versions)."""
        deleted = self.deleted_version(tenant, session_id)
        return [v for v in self._on_disk(tenant, session_id) if v > deleted]

    def deleted_version(self, tenant: str, session_id: str) -> int:
        """The version the session was deleted at; 0 if it never was."""
        key = (tenant, session_id)
        with self._deleted_lock:
            known = self._deleted.get(key)
            if known is not None:
                self._deleted.move_to_end(key)
                return known
        path = self.session_dir(tenant, session_id) / DELETED_MARKER
        try:
            version = int(json.loads(path.read_bytes())["version"])
        except FileNotFoundError:
            version = 0
        self._remember_deleted(key, version)
        return version

    def _remember_deleted(self, key: tuple[str, str], version: int) -> None:
        with self._deleted_lock:
            self._deleted[key] = version
            self._deleted.move_to_end(key)
            while len(self._deleted) > _DELETED_CACHE:
                self._deleted.popitem(last=False)

    def delete(self, tenant: str, session_id: str, version: int) -> None:
        """Record the deletion at ``version`` durably, then remove every version and any
        crashed writer's temp directory (they hold the same history). Idempotent; the
        marker only ever moves up, so a redelivered older deletion cannot lower it."""
        sdir = self.session_dir(tenant, session_id)
        # Marker first: from the moment it is durable nothing at or below it is read,
        # whether or not the removal below completes.
        if version > self.deleted_version(tenant, session_id):
            marker = {"version": version, "deleted": time.time()}
            atomic_write(sdir / DELETED_MARKER, json.dumps(marker).encode())
            self._remember_deleted((tenant, session_id), version)
        for number in self._on_disk(tenant, session_id):
            shutil.rmtree(sdir / f"{number:08d}")
        for tmp in sdir.glob(".*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink(missing_ok=True)
        fsync_dir(sdir)

    def write(self, state: SessionState, trigger: str) -> Path:
        """Store ``state`` as its version (a no-op if that version exists), then rotate."""
        final = self.session_dir(state.tenant, state.session_id) / f"{state.version:08d}"
        if final.is_dir():
            return final
        blob, info = self.codec.encode(state.encoded, state.aad("context"))
        metadata = {
            "tenant": state.tenant,
            "session_id": state.session_id,
            "version": state.version,
            "steps": len(state.messages),
            "model": state.model,
            "created": state.created,
            "archived": time.time(),
            "trigger": trigger,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
            "codec": info.to_json(),
            "settings_digest": self.settings_digest,
            "merged_from": state.merged_from,
        }
        with atomic_dir(final) as tmp:
            write_file(tmp / "context.bin", blob)
            write_file(tmp / "config.yaml", self._config_yaml)
            write_file(tmp / "metadata.json", json.dumps(metadata, indent=2).encode())
        self.rotate(state.tenant, state.session_id)
        return final

    def read(self, tenant: str, session_id: str, version: int) -> SessionState:
        """The verified ``version``; ``NotFoundError`` if absent, ``CorruptSnapshotError``
        if its bytes do not match the recorded sha256 or cannot be opened."""
        vdir = self.session_dir(tenant, session_id) / f"{version:08d}"
        absent = NotFoundError(f"session {session_id!r} has no version {version}", param="version")
        if version <= self.deleted_version(tenant, session_id):
            raise absent  # deleted, even if a crash left its files behind
        try:
            metadata = json.loads((vdir / "metadata.json").read_bytes())
            blob = (vdir / "context.bin").read_bytes()
        except FileNotFoundError:
            raise absent from None
        if hashlib.sha256(blob).hexdigest() != metadata.get("sha256"):
            raise CorruptSnapshotError(f"snapshot {session_id!r} v{version}: checksum mismatch")
        aad = associated_data("context", tenant, session_id, version)
        try:
            plain = self.codec.decode(blob, CodecInfo.from_json(metadata["codec"]), aad)
        except CodecError as exc:
            raise CorruptSnapshotError(f"snapshot {session_id!r} v{version}: {exc}") from None
        return SessionState.from_json(json.loads(plain))

    def latest(self, tenant: str, session_id: str) -> SessionState | None:
        """The newest version that verifies; a corrupt one is logged and skipped."""
        for version in reversed(self.versions(tenant, session_id)):
            try:
                return self.read(tenant, session_id, version)
            except CorruptSnapshotError as exc:
                log.error("skipping unreadable snapshot", extra={"reason": exc.message})
        return None

    def rotate(self, tenant: str, session_id: str) -> None:
        """Delete versions beyond ``max_keep`` and crashed writers' temp directories
        (the directory is fsynced only when something was removed: the new version's
        rename was made durable by its writer)."""
        sdir = self.session_dir(tenant, session_id)
        removed = False
        for version in self.versions(tenant, session_id)[: -self.max_keep]:
            shutil.rmtree(sdir / f"{version:08d}")
            removed = True
        now = time.time()
        for tmp in sdir.glob(".*.tmp"):
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
                removed = True
        if removed:
            fsync_dir(sdir)

    def session_keys(self) -> Iterator[str]:
        """``tenant/session`` of every archived session (directory names only)."""
        for tenant_dir in self.root.glob("sessions/*/*"):
            for sdir in tenant_dir.iterdir():
                if not sdir.name.startswith("."):
                    yield f"{tenant_dir.name}/{sdir.name}"
